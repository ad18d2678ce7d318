"""What ``lightning predict -c configs/sepe_sample.yaml`` writes, as a callback (``trainer.callbacks`` of
``configs/sepe_sample.yaml``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lang3d.models.point_e.cloud_files import write_cloud

FORMATS = ("ply", "npz")


class GeneratedCloudWriter(BasePredictionWriter):
    """After each predict batch, the clouds ``SEPEFineTuning.predict_step`` returns as ``<output_dir>/<name>.ply``
    and / or ``.npz`` (``formats``; layout of ``lang3d.models.point_e.cloud_files.write_cloud``), each file atomically;
    under DDP each process writes the prompts it generated."""

    def __init__(self, output_dir: str = "runs/sepe/samples", formats: Sequence[str] = FORMATS):
        super().__init__(write_interval="batch")
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"GeneratedCloudWriter: unknown output formats {unknown} (known: {', '.join(FORMATS)})")
        self.output_dir, self.formats = Path(output_dir), tuple(formats)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        for name, prompt, cloud in zip(prediction["name"], prediction["prompt"], prediction["clouds"].cpu().numpy()):
            write_cloud(self.output_dir / name, cloud, prompt, self.formats)

"""What ``lightning predict -c configs/pointbind.yaml -c configs/pointbind_arithmetic.yaml`` writes, as a callback
(``trainer.callbacks`` of ``configs/pointbind_arithmetic.yaml``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lang3d.training.atomic import atomic_write


class ArithmeticRankingWriter(BasePredictionWriter):
    """Writes the rankings ``PointBindAlignment.predict_step`` returns (per query: its keys and ``nearest``, the k
    gallery items with their cosine similarities, best first) to the JSON file ``output``, a list in query order,
    at the end of predict. Under DDP the processes' queries are gathered and process 0 writes the file."""

    def __init__(self, output: str = "runs/pointbind/arithmetic.json"):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        # one predict loader (whose predictions Lightning passes unnested), one query per batch
        results, (indices,) = predictions, batch_indices
        ranked = [(int(index), result) for (index,), result in zip(indices, results)]
        if trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            dist.all_gather_object(gathered, ranked)
            ranked = [item for part in gathered for item in part]
        if trainer.is_global_zero:
            ordered = [result for _, result in sorted(ranked, key=lambda item: item[0])]
            with atomic_write(self.output, "w") as f:
                json.dump(ordered, f, indent=2)
            rank_zero_info(f"embedding arithmetic: {len(ordered)} queries -> {self.output}")

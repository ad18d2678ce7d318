"""What ``lightning predict -c configs/pointbind.yaml -c configs/pointbind_arithmetic.yaml`` (or
``configs/pointbind_audio.yaml``) writes, as a callback (``trainer.callbacks`` of those configs)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lang3d.data.image_files import read_image
from lang3d.models.imagebind.audio import load_audio_clips
from lang3d.training.atomic import atomic_write
from lang3d.visual.panels import cloud_panel, image_panel, spectrogram_panel, strip, text_panel
from lang3d.visual.ply import write_point_ply
from lang3d.visual.tensorboard import log_image
from pointbind.arithmetic_data import read_cloud

GREY = 128


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "item"


def _panel(kind: str, value: str) -> np.ndarray:
    """The panel of a query input or gallery item (``kind``: points, text, image, audio; ``value``: its text or
    file)."""
    if kind == "points":
        return cloud_panel(*read_cloud(value))
    if kind == "image":
        return image_panel(read_image(value))
    if kind == "audio":
        return spectrogram_panel(load_audio_clips(value).numpy())
    return text_panel(value)


def query_picture(result: dict) -> np.ndarray:
    """One query's picture: its inputs, then its ranked items with their cosine similarities."""
    inputs = [(kind, result[kind]) for kind in ("points", "text", "image", "audio") if kind in result]
    panels = [_panel(kind, value) for kind, value in inputs]
    captions = [f"{'query' if i == 0 else '+'} {kind}: {Path(value).name if kind != 'text' else value}"
                for i, (kind, value) in enumerate(inputs)]
    for rank, item in enumerate(result["nearest"], start=1):
        panels.append(_panel(item["kind"], item["item"]))
        name = item["item"] if item["kind"] == "text" else Path(item["item"]).name
        captions.append(f"#{rank} {item['score']:.3f} {name}")
    return strip(panels, captions)


def write_query_clouds(result: dict, folder: Path) -> list[Path]:
    """The query's point cloud (``query.ply``) and its retrieved clouds (``rank<r>_<name>.ply``) as PLY files in
    ``folder`` (clouds without colours in grey); returns the files written."""
    clouds = [("query", result["points"])] if "points" in result else []
    clouds += [(f"rank{rank}_{_slug(Path(item['item']).stem)}", item["item"])
               for rank, item in enumerate(result["nearest"], start=1) if item["kind"] == "points"]
    written = []
    for name, path in clouds:
        xyz, rgb = read_cloud(path)
        write_point_ply(folder / f"{name}.ply", xyz, np.full_like(xyz, GREY) if rgb is None else rgb)
        written.append(folder / f"{name}.ply")
    return written


class ArithmeticRankingWriter(BasePredictionWriter):
    """Writes the rankings ``PointBindAlignment.predict_step`` returns (per query: its keys and ``nearest``, the k
    gallery items with their kinds and cosine similarities, best first) to the JSON file ``output``, a list in
    query order, at the end of predict. With ``ply_dir``, each query's point cloud and its retrieved clouds are also
    written as PLY files in ``ply_dir/query_<i>/``; with ``pictures`` and a TensorBoard logger, each query's picture
    (its inputs and ranked items: renders, images, texts, spectrograms) is logged as ``predict/query_<i>``. Under
    DDP the processes' queries are gathered and process 0 writes."""

    def __init__(self, output: str = "runs/pointbind/arithmetic.json", ply_dir: str | None = None,
                 pictures: bool = True):
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        self.ply_dir = Path(ply_dir) if ply_dir else None
        self.pictures = pictures

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        # one predict loader (whose predictions Lightning passes unnested), one query per batch
        results, (indices,) = predictions, batch_indices
        ranked = [(int(index), result) for (index,), result in zip(indices, results)]
        if trainer.world_size > 1:
            gathered: list = [None] * trainer.world_size
            dist.all_gather_object(gathered, ranked)
            ranked = [item for part in gathered for item in part]
        if not trainer.is_global_zero:
            return
        ordered = [result for _, result in sorted(ranked, key=lambda item: item[0])]
        with atomic_write(self.output, "w") as f:
            json.dump(ordered, f, indent=2)
        clouds = []
        for i, result in enumerate(ordered):
            if self.ply_dir is not None:
                clouds += write_query_clouds(result, self.ply_dir / f"query_{i:03d}")
            if self.pictures and isinstance(trainer.logger, TensorBoardLogger):
                log_image(trainer.logger, f"predict/query_{i:03d}", query_picture(result), trainer.global_step)
        rank_zero_info(f"retrieval / embedding arithmetic: {len(ordered)} queries -> {self.output}"
                       + (f", {len(clouds)} PLY files in {self.ply_dir}" if self.ply_dir is not None else ""))

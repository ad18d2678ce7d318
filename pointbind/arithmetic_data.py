"""Predict inputs for embedding arithmetic (``lightning predict -c configs/pointbind_arithmetic.yaml``).

Each query is a point cloud file (``.pt`` / ``.ply`` as Cap3D writes them) plus a text or an image; its 3D
embedding is composed with the other embedding (``pointbind.arithmetic.compose``) and the ``k`` nearest items of
the gallery (texts and/or images) are ranked, per query; ``pointbind.writers.ArithmeticRankingWriter`` writes them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.cap3d.objects import read_point_cloud
from lang3d.data.image_files import read_image
from lang3d.data.point_ops import farthest_point_sample_np, normalize_unit_sphere


class ArithmeticInputError(ValueError):
    """A query or gallery entry that cannot be used; the message names it."""


def load_points(path: str | Path, num_points: int) -> np.ndarray:
    """[num_points, 3] float32 in the unit sphere: farthest-point sampled (from index 0) when the cloud has more."""
    xyz, _ = read_point_cloud(path)
    if len(xyz) < num_points:
        raise ArithmeticInputError(f"{path}: {len(xyz)} points, fewer than the {num_points} the encoder takes")
    xyz = xyz[farthest_point_sample_np(xyz, num_points)] if len(xyz) > num_points else xyz
    return normalize_unit_sphere(xyz.astype(np.float64)).astype(np.float32)


class ArithmeticQueriesDataModule(L.LightningDataModule):
    """queries: [{"points": path, "text": str} or {"points": path, "image": path}, ...]; gallery_texts /
    gallery_images: the items to retrieve from; weights: of the 3D and the other embedding in the sum.

    Batches (one query each): ``query`` (its dict), ``points`` [1,N,3], ``image`` uint8 [1,H,W,3] for an image
    query, and the request: ``gallery`` ({"items": names in embedding order, "texts", "images": uint8 [G_img,H,W,3]
    or None}), ``k``, ``weights``."""

    def __init__(self, queries: list[dict], gallery_texts: list[str] | None = None,
                 gallery_images: list[str] | None = None, num_points: int = 8192, k: int = 5,
                 weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.save_hyperparameters()
        for i, query in enumerate(queries):
            if "points" not in query or (("text" in query) == ("image" in query)):
                raise ArithmeticInputError(f"query {i} must hold 'points' and exactly one of 'text' and 'image', "
                                           f"got keys {sorted(query)}")
        self.gallery_texts = list(gallery_texts or [])
        self.gallery_images = list(gallery_images or [])
        if not self.gallery_texts and not self.gallery_images:
            raise ArithmeticInputError("the gallery is empty: give gallery_texts and/or gallery_images")
        self.k, self.weights = k, tuple(weights)

    def gallery_items(self) -> list[str]:
        """Names of the gallery items in embedding order: texts, then image paths."""
        return self.gallery_texts + self.gallery_images

    def gallery_image_batch(self) -> torch.Tensor:
        """uint8 [G_img,H,W,3] of the gallery images (all must share one size)."""
        images = [read_image(p) for p in self.gallery_images]
        if len({im.shape for im in images}) > 1:
            raise ArithmeticInputError(f"gallery images differ in size: {sorted({im.shape for im in images})}")
        return torch.from_numpy(np.stack(images))

    def predict_dataloader(self) -> DataLoader:
        gallery = {"items": self.gallery_items(), "texts": self.gallery_texts,
                   "images": self.gallery_image_batch() if self.gallery_images else None}
        return DataLoader(self.hparams.queries, batch_size=1, shuffle=False,
                          collate_fn=partial(self._load, gallery=gallery))

    def _load(self, queries: list[dict], gallery: dict) -> dict:
        (query,) = queries
        points = load_points(query["points"], self.hparams.num_points)
        batch = {"query": query, "points": torch.from_numpy(points)[None], "gallery": gallery, "k": self.k,
                 "weights": self.weights}
        if "image" in query:
            batch["image"] = torch.from_numpy(read_image(query["image"]))[None]
        return batch

"""Predict inputs for retrieval and embedding arithmetic in the joint space (``lightning predict -c
configs/pointbind_arithmetic.yaml``; with sounds, ``configs/pointbind_audio.yaml``).

A query is one input (a point cloud, a text, an image or a sound: plain retrieval, e.g. audio -> 3D) or a point
cloud plus one text, image or sound (arithmetic: the two embeddings composed, ``pointbind.arithmetic.compose``).
The ``k`` nearest items of the gallery (texts, images and/or point clouds) are ranked per query;
``pointbind.writers.ArithmeticRankingWriter`` writes them.

Point clouds: ``.pt`` / ``.ply`` as Cap3D writes them, a ``.pt`` tensor [P,3] of xyz (Point-Bind's
``examples/*.pt``) or a ModelNet40 ``.txt`` shape. Sounds: any file libsndfile reads, as ImageBind's audio input
(``lang3d.models.imagebind.audio``).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.cap3d.objects import read_point_cloud
from datamodules.modelnet40.resampled import read_shape
from lang3d.data.image_files import read_image
from lang3d.data.point_ops import farthest_point_sample_np, normalize_unit_sphere
from lang3d.models.imagebind.audio import load_audio_clips

QUERY_INPUTS = ("points", "text", "image", "audio")


class ArithmeticInputError(ValueError):
    """A query or gallery entry that cannot be used; the message names it."""


def read_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A point-cloud file -> (xyz float32 [P,3], rgb float32 [P,3] in 0..255, or None without colours): a ``.pt``
    tensor [P,3] (xyz, as Point-Bind's examples), a ModelNet40 ``.txt`` shape (x,y,z,nx,ny,nz lines), else Cap3D's
    ``.pt`` [6,P] / ``.ply`` (``read_point_cloud``)."""
    path = Path(path)
    if path.suffix == ".txt":
        return read_shape(path)[:, :3].copy(), None
    if path.suffix == ".pt" and path.is_file():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any load failure means an unreadable file
            raise ArithmeticInputError(f"{path}: cannot be loaded as a point cloud ({type(err).__name__})") from None
        if isinstance(data, torch.Tensor) and data.dim() == 2 and data.shape[1] == 3 and data.shape[0] != 6:
            return data.float().numpy(), None
    return read_point_cloud(path)


def load_points(path: str | Path, num_points: int) -> np.ndarray:
    """[num_points, 3] float32 in the unit sphere: farthest-point sampled (from index 0) when the cloud has more."""
    xyz, _ = read_cloud(path)
    if len(xyz) < num_points:
        raise ArithmeticInputError(f"{path}: {len(xyz)} points, fewer than the {num_points} the encoder takes")
    xyz = xyz[farthest_point_sample_np(xyz, num_points)] if len(xyz) > num_points else xyz
    return normalize_unit_sphere(xyz.astype(np.float64)).astype(np.float32)


class ArithmeticQueriesDataModule(L.LightningDataModule):
    """queries: [{"points": path, "text": str}, {"audio": path}, {"points": path, "audio": path}, ...] (see the
    module); gallery_texts / gallery_images / gallery_points: the items to retrieve from (texts; image files of
    one size; point-cloud files); weights: of the 3D and the other embedding in an arithmetic query's sum.

    Batches (one query each): ``query`` (its dict), and as it asks ``points`` [1,N,3], ``image`` uint8 [1,H,W,3],
    ``audio`` [1,3,1,128,204]; and the request: ``gallery`` ({"items": names in embedding order, "kinds": "text" /
    "image" / "points" per item, "texts", "images": uint8 [G_img,H,W,3] or None, "points": [G_pts,N,3] or None}),
    ``k``, ``weights``."""

    def __init__(self, queries: list[dict], gallery_texts: list[str] | None = None,
                 gallery_images: list[str] | None = None, gallery_points: list[str] | None = None,
                 num_points: int = 8192, k: int = 5, weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.save_hyperparameters()
        for i, query in enumerate(queries):
            others = [key for key in QUERY_INPUTS[1:] if key in query]
            unknown = sorted(set(query) - set(QUERY_INPUTS))
            if unknown or len(others) > 1 or not ("points" in query or others):
                raise ArithmeticInputError(f"query {i} must hold a point cloud ('points'), a text, an image or a "
                                           f"sound ('audio'), or 'points' and one of the others; got keys "
                                           f"{sorted(query)}")
        self.gallery_texts = list(gallery_texts or [])
        self.gallery_images = list(gallery_images or [])
        self.gallery_points = list(gallery_points or [])
        if not (self.gallery_texts or self.gallery_images or self.gallery_points):
            raise ArithmeticInputError("the gallery is empty: give gallery_texts, gallery_images and/or "
                                       "gallery_points")
        self.k, self.weights = k, tuple(weights)

    def gallery_items(self) -> list[str]:
        """Names of the gallery items in embedding order: texts, then image paths, then point-cloud paths."""
        return self.gallery_texts + self.gallery_images + self.gallery_points

    def gallery_kinds(self) -> list[str]:
        """The kind of each gallery item, in ``gallery_items`` order."""
        return (["text"] * len(self.gallery_texts) + ["image"] * len(self.gallery_images)
                + ["points"] * len(self.gallery_points))

    def gallery_image_batch(self) -> torch.Tensor:
        """uint8 [G_img,H,W,3] of the gallery images (all must share one size)."""
        images = [read_image(p) for p in self.gallery_images]
        if len({im.shape for im in images}) > 1:
            raise ArithmeticInputError(f"gallery images differ in size: {sorted({im.shape for im in images})}")
        return torch.from_numpy(np.stack(images))

    def predict_dataloader(self) -> DataLoader:
        clouds = [load_points(p, self.hparams.num_points) for p in self.gallery_points]
        gallery = {"items": self.gallery_items(), "kinds": self.gallery_kinds(), "texts": self.gallery_texts,
                   "images": self.gallery_image_batch() if self.gallery_images else None,
                   "points": torch.from_numpy(np.stack(clouds)) if clouds else None}
        return DataLoader(self.hparams.queries, batch_size=1, shuffle=False,
                          collate_fn=partial(self._load, gallery=gallery))

    def _load(self, queries: list[dict], gallery: dict) -> dict:
        (query,) = queries
        batch = {"query": query, "gallery": gallery, "k": self.k, "weights": self.weights}
        if "points" in query:
            batch["points"] = torch.from_numpy(load_points(query["points"], self.hparams.num_points))[None]
        if "image" in query:
            batch["image"] = torch.from_numpy(read_image(query["image"]))[None]
        if "audio" in query:
            batch["audio"] = load_audio_clips(query["audio"])[None]
        return batch

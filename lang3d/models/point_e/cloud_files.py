"""Generated point clouds to files, in Point-E's layout (SEPE generation, Point-Bind any-to-3D)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lang3d.training.atomic import atomic_write
from lang3d.visual.ply import write_point_ply

CLOUD_FORMATS = ("ply", "npz")


def slug(text: str, max_len: int = 40) -> str:
    """File-name-safe form of a prompt: lowercase words joined by '_' (at most ``max_len`` characters)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "prompt"


def write_cloud(stem: Path, cloud: np.ndarray, prompt: str, formats=CLOUD_FORMATS) -> list[Path]:
    """Write cloud [6,P] (xyz data units, RGB 0..255) as ``<stem>.ply`` (float x,y,z + uchar red,green,blue, as
    Point-E's ``write_ply``) and/or ``<stem>.npz`` (``coords`` float32 [P,3], ``colors`` uint8 [P,3], ``prompt``),
    each written atomically."""
    xyz = cloud[:3].T.astype(np.float32)
    rgb = np.clip(np.round(cloud[3:].T), 0, 255).astype(np.uint8)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "ply":
            write_point_ply(path, xyz, rgb)
        elif fmt == "npz":
            with atomic_write(path) as f:
                np.savez(f, coords=xyz, colors=rgb, prompt=np.array(prompt))
        else:
            raise ValueError(f"unknown output format {fmt!r} ({', '.join(CLOUD_FORMATS)})")
        written.append(path)
    return written

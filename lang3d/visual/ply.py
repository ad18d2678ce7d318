"""Writing coloured point clouds as binary PLY (plyfile), atomically (``lang3d.training.atomic``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from lang3d.training.atomic import atomic_write


def write_point_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray, **scalars: np.ndarray) -> None:
    """Vertices ``x, y, z`` float32 (xyz [P,3]), ``red, green, blue`` uchar (rgb [P,3], 0..255) and one property
    per extra [P] array in ``scalars`` (its dtype kept, e.g. ``label=np.uint16 array``) — the layout of Point-E's
    ``write_ply`` and ScanNet's label PLYs."""
    xyz = np.asarray(xyz)
    rgb = np.asarray(rgb)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
        raise ValueError(f"write_point_ply({path}): xyz and rgb must both be [P,3], got {xyz.shape} and {rgb.shape}")
    extra = {name: np.asarray(values) for name, values in scalars.items()}
    for name, values in extra.items():
        if values.shape != (len(xyz),):
            raise ValueError(f"write_point_ply({path}): '{name}' must be [{len(xyz)}], got {values.shape}")
    fields = [(n, "f4") for n in "xyz"] + [(n, "u1") for n in ("red", "green", "blue")]
    vertex = np.empty(len(xyz), dtype=fields + [(name, values.dtype.str) for name, values in extra.items()])
    for i, n in enumerate("xyz"):
        vertex[n] = xyz[:, i]
    for i, n in enumerate(("red", "green", "blue")):
        vertex[n] = np.clip(np.round(rgb[:, i]), 0, 255)
    for name, values in extra.items():
        vertex[name] = values
    with atomic_write(path) as f:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(f)

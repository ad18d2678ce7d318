"""Composable point-cloud transforms over a per-room dict of numpy arrays (Pointcept style).

A room dict holds ``coord`` [P,3] float metres, ``color`` [P,3] in 0..255 (uint8 or float), ``segment`` [P]
int labels and any other keys, which pass through. Every transform is called as ``t(data, rng)`` with an
explicit ``np.random.Generator`` (deterministic ones ignore it), so a pipeline is reproducible from a seed.
Transforms return a new dict and never write into the input arrays (they may be shared, e.g. cached).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lang3d.geometry.voxel_grid import unique_rows


class Compose:
    """Apply ``transforms`` in order, passing the same generator along."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            data = transform(data, rng)
        return data


def _xy_centre(coord: np.ndarray) -> np.ndarray:
    return np.array([(coord[:, 0].min() + coord[:, 0].max()) / 2, (coord[:, 1].min() + coord[:, 1].max()) / 2])


class CenterShift:
    """Move the room so that its x-y bounding box is centred on the origin and (``apply_z``) its z minimum is 0."""

    def __init__(self, apply_z: bool = True):
        self.apply_z = apply_z

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        coord = np.asarray(data["coord"])
        shift = np.zeros(3, dtype=coord.dtype)
        shift[:2] = _xy_centre(coord)
        if self.apply_z:
            shift[2] = coord[:, 2].min()
        return {**data, "coord": coord - shift}


class RandomFlipXY:
    """Mirror x (probability ``p``) and, independently, y (probability ``p``) about the x-y bounding-box centre."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        coord = np.array(data["coord"])
        centre = _xy_centre(coord)
        for axis in (0, 1):
            if rng.random() < self.p:
                coord[:, axis] = 2 * centre[axis] - coord[:, axis]
        return {**data, "coord": coord}


class RandomRotateZ:
    """Rotate about the vertical axis through the x-y bounding-box centre by an angle drawn uniformly from
    ``angle`` = (low, high) radians."""

    def __init__(self, angle: tuple[float, float] = (-np.pi, np.pi)):
        self.angle = angle

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        coord = np.asarray(data["coord"])
        theta = rng.uniform(*self.angle)
        c, s = np.cos(theta), np.sin(theta)
        rot = np.array([[c, -s], [s, c]])
        centre = _xy_centre(coord)
        out = coord.copy()
        out[:, :2] = ((coord[:, :2] - centre) @ rot.T + centre).astype(coord.dtype)
        return {**data, "coord": out}


class RandomScale:
    """Scale coordinates isotropically (about the origin) by a factor drawn uniformly from ``scale`` = (low, high)."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1)):
        self.scale = scale

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        coord = np.asarray(data["coord"])
        return {**data, "coord": (coord * rng.uniform(*self.scale)).astype(coord.dtype)}


class ChromaticJitter:
    """Add Gaussian colour noise of std ``std`` x 255 per point and channel, clipped to 0..255; output float32."""

    def __init__(self, std: float = 0.05):
        self.std = std

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        color = np.asarray(data["color"], dtype=np.float32)
        noise = rng.normal(0.0, self.std * 255.0, size=color.shape).astype(np.float32)
        return {**data, "color": np.clip(color + noise, 0.0, 255.0)}


class GridSample:
    """Voxelise into cubes of edge ``voxel_size`` metres (voxel of point p = floor(p / voxel_size)).

    Output: ``coord`` [V,3] int32 voxel indices (unique, lexicographically sorted, as
    ``lang3d.geometry.camera.voxelize``), ``color`` [V,3] float32 in [0,1], ``segment`` [V] int64 and ``inverse`` [P,1]
    int64 (voxel of each input point). ``mode="train"``: one point drawn uniformly per voxel (Pointcept), giving the
    voxel its colour and label. ``mode="test"``: colour = mean over the voxel's points, label = the most frequent label
    among them (ties to the smallest label). ``keep_points``: also keep the input points as ``point_coord`` [P,3]
    float32, ``point_segment`` [P] int64 and ``point_color`` [P,3] (input dtype). An ``instance`` [P] int array (ids,
    -1 = none), when present, is carried like ``segment``: ``instance`` [V] int64 is the drawn point's id (train)
    or the most frequent id in the voxel (test, ties to the smallest), and ``keep_points`` adds
    ``point_instance`` [P] int64. Other keys pass through.
    """

    def __init__(self, voxel_size: float, mode: str = "train", keep_points: bool = False):
        if mode not in ("train", "test"):
            raise ValueError(f"GridSample mode must be 'train' or 'test', got {mode!r}")
        self.voxel_size = voxel_size
        self.mode = mode
        self.keep_points = keep_points

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        coord = np.asarray(data["coord"])
        color = np.asarray(data["color"])
        segment = np.asarray(data["segment"]).astype(np.int64)
        grid = np.floor(coord.astype(np.float64) / self.voxel_size).astype(np.int64)
        voxels, inverse, counts = unique_rows(grid)
        labels = {"segment": segment}
        if "instance" in data:
            labels["instance"] = np.asarray(data["instance"]).astype(np.int64)
        for key, value in labels.items():
            if value.shape != (len(coord),):
                raise ValueError(f"GridSample: {key} must be [P={len(coord)}] like coord, got {value.shape}"
                                 f"{' in ' + data['name'] if 'name' in data else ''}")
        out = {k: v for k, v in data.items() if k not in ("coord", "color", *labels)}
        if self.mode == "train":
            if rng is None:
                raise ValueError("GridSample(mode='train') draws one point per voxel: pass an rng")
            chosen = voxel_random_point(inverse, counts, rng)
            out["color"] = color[chosen].astype(np.float32) / 255.0
            out.update({key: value[chosen] for key, value in labels.items()})
        else:
            out["color"] = (voxel_mean(color, inverse, counts) / 255.0).astype(np.float32)
            out.update({key: _voxel_mode(inverse, value, len(voxels)) for key, value in labels.items()})
        out["coord"] = voxels.astype(np.int32)
        out["inverse"] = inverse[:, None]
        if self.keep_points:
            out["point_coord"] = coord.astype(np.float32)
            out["point_color"] = color
            out.update({f"point_{key}": value for key, value in labels.items()})
        return out


def points_by_voxel(inverse: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order [P], starts [V]): the points sorted by voxel (stable, so in input order within a voxel) and where
    each voxel's points begin in that order. ``order[starts]`` is each voxel's first point."""
    return np.argsort(inverse, kind="stable"), np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def voxel_random_point(inverse: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[V] int64: one point per voxel, drawn uniformly among its points (one ``rng.random(V)`` draw)."""
    order, starts = points_by_voxel(inverse, counts)
    return order[starts + (rng.random(len(counts)) * counts).astype(np.int64)]


def voxel_mean(values: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean [V,C] float64 of ``values`` [P,C] over the points of each voxel."""
    sums = np.stack([np.bincount(inverse, weights=values[:, c], minlength=len(counts))
                     for c in range(values.shape[1])], 1)
    return sums / counts[:, None]


def _voxel_mode(inverse: np.ndarray, label: np.ndarray, num_voxels: int) -> np.ndarray:
    """Most frequent label per voxel, ties to the smallest label: [V] int64."""
    span = int(label.max() - label.min()) + 1
    pairs, counts = np.unique(inverse * span + (label - label.min()), return_counts=True)
    voxel, value = pairs // span, pairs % span + label.min()
    best = np.lexsort((value, -counts, voxel))  # by voxel, then count descending, then label ascending
    first = best[np.r_[True, voxel[best][1:] != voxel[best][:-1]]]
    out = np.empty(num_voxels, dtype=np.int64)
    out[voxel[first]] = value[first]
    return out

"""Box-aware transforms of detection scenes (VoteNet's augmentation) and a voxeliser that keeps the box labels.

A detection scene dict holds, per point, ``coord`` [P,3] float metres, ``color`` [P,3] float 0..255,
``segment`` [P] int64 (class index, -1 none), ``vote`` [P,9] float metres (up to 3 offsets object centre -
point, repeated to fill 3, zero where no object) and ``vote_mask`` [P] int64 (1 = the point belongs to an
object); per scene ``gt_boxes`` [G,7] float (cx, cy, cz, dx, dy, dz, heading): full sizes in metres, heading
= counter-clockwise rotation about +z (box-frame point p -> R_z(heading) p + centre), ``gt_labels`` [G]
int64; other keys (``name``) pass through. Transforms are called ``t(data, rng)`` like
``lang3d.data.transforms`` and return new dicts. Flips, rotations and scalings act about the origin (as
VoteNet's), so vote offsets transform like directions.
"""
from __future__ import annotations

import numpy as np

from lang3d.data.transforms import points_by_voxel, voxel_mean, voxel_random_point
from lang3d.geometry.voxel_grid import unique_rows

POINT_KEYS = ("coord", "color", "segment", "vote", "vote_mask")
"""Per-point keys of a detection scene dict (indexed together by sampling and voxelisation)."""


def rotation_z(theta: float) -> np.ndarray:
    """[3,3] float64 counter-clockwise rotation by ``theta`` radians about +z."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles (radians, any shape) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, tolerance: float = 1e-6) -> np.ndarray:
    """[P,G] bool: point p lies in box g (faces included, ``tolerance`` metres of slack). points [P,3],
    boxes [G,7] in the project convention."""
    points, boxes = np.asarray(points, np.float64), np.asarray(boxes, np.float64)
    d = points[:, None, :] - boxes[None, :, :3]                       # [P,G,3] world offsets from the centres
    c, s = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1], d[..., 2]], -1)  # R^T d
    return (np.abs(local) <= boxes[None, :, 3:6] / 2 + tolerance).all(-1)


def box_segment(points: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[P] int64 class of the smallest (by volume) box containing each point, -1 for points in no box."""
    inside = points_in_boxes(points, boxes)
    if not inside.size:
        return np.full(len(points), -1, dtype=np.int64)
    volume = np.prod(np.asarray(boxes, np.float64)[:, 3:6], axis=1)
    best = np.where(inside, volume[None, :], np.inf).argmin(1)
    return np.where(inside.any(1), np.asarray(labels, np.int64)[best], -1)


def _linear(data: dict, matrix: np.ndarray) -> dict:
    """Apply the linear map ``matrix`` [3,3] to points, vote offsets and box centres (sizes/heading untouched)."""
    coord = np.asarray(data["coord"])
    vote = np.asarray(data["vote"])
    boxes = np.array(data["gt_boxes"], dtype=np.float64).reshape(-1, 7)
    boxes[:, :3] = boxes[:, :3] @ matrix.T
    moved_votes = (vote.reshape(-1, 3, 3).astype(np.float64) @ matrix.T).reshape(vote.shape)
    return {**data, "coord": (coord.astype(np.float64) @ matrix.T).astype(coord.dtype),
            "vote": moved_votes.astype(vote.dtype), "gt_boxes": boxes.astype(np.float32)}


class SamplePoints:
    """Keep ``num_points`` points drawn at random (VoteNet's ``random_sampling``): without replacement, or with
    replacement when the scene has fewer points."""

    def __init__(self, num_points: int):
        self.num_points = num_points

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        count = len(data["coord"])
        choice = rng.choice(count, self.num_points, replace=count < self.num_points)
        return {**data, **{key: np.asarray(data[key])[choice] for key in POINT_KEYS}}


class RandomFlipBoxes:
    """Mirror ``axis`` (0: x -> -x, 1: y -> -y) with probability ``p``. Oriented boxes get heading pi - h
    (x) or -h (y), so a box keeps facing the mirrored direction; axis-aligned boxes (``oriented=False``) keep
    heading 0."""

    def __init__(self, axis: int, p: float = 0.5, oriented: bool = True):
        if axis not in (0, 1):
            raise ValueError(f"RandomFlipBoxes axis must be 0 (x) or 1 (y), got {axis}")
        self.axis, self.p, self.oriented = axis, p, oriented

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return data
        mirror = np.eye(3)
        mirror[self.axis, self.axis] = -1.0
        out = _linear(data, mirror)
        if self.oriented:
            boxes = out["gt_boxes"]
            heading = np.pi - boxes[:, 6] if self.axis == 0 else -boxes[:, 6]
            boxes[:, 6] = wrap_angle(heading)
        return out


class RandomRotateBoxesZ:
    """Rotate about +z (through the origin) by an angle uniform in [-max_angle, max_angle] radians. Oriented
    boxes turn with the points (heading + angle); axis-aligned boxes are re-fitted to their rotated corners
    (VoteNet's ``rotate_aligned_boxes``: dx' = |cos| dx + |sin| dy, dy' = |sin| dx + |cos| dy)."""

    def __init__(self, max_angle: float, oriented: bool = True):
        self.max_angle, self.oriented = max_angle, oriented

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        theta = rng.uniform(-self.max_angle, self.max_angle)
        out = _linear(data, rotation_z(theta))
        boxes = out["gt_boxes"]
        if self.oriented:
            boxes[:, 6] = wrap_angle(boxes[:, 6] + theta)
        else:
            c, s = abs(np.cos(theta)), abs(np.sin(theta))
            dx, dy = boxes[:, 3].copy(), boxes[:, 4].copy()
            boxes[:, 3], boxes[:, 4] = c * dx + s * dy, s * dx + c * dy
        return out


class RandomScaleBoxes:
    """Scale points, vote offsets, box centres and sizes by one factor uniform in ``scale`` = (low, high)."""

    def __init__(self, scale: tuple[float, float] = (0.85, 1.15)):
        self.scale = scale

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        factor = rng.uniform(*self.scale)
        out = _linear(data, np.eye(3) * factor)
        out["gt_boxes"][:, 3:6] *= factor
        return out


class VoxelizeDetection:
    """Voxelise a detection scene into cubes of edge ``voxel_size`` metres (voxel = floor(xyz / voxel_size)).

    Each voxel takes its labels (``segment``, ``vote_mask`` and vote target) from one representative point:
    ``mode="train"`` one point drawn uniformly, whose position and colour the voxel also takes;
    ``mode="test"`` the voxel's first point, the voxel's position and colour being the means over its points.
    Output: ``coord`` [V,3] int32 (unique, lexicographically sorted), ``xyz`` [V,3] float32 metres, ``color``
    [V,3] float32 0..1, ``segment`` [V] int64, ``vote`` [V,9] float32 (the representative point's object
    centres - xyz, 0 where ``vote_mask`` is 0), ``vote_mask`` [V] int64, ``gt_boxes`` [G,7] float32,
    ``gt_labels`` [G] int64; other keys pass through.
    """

    def __init__(self, voxel_size: float, mode: str = "train"):
        if mode not in ("train", "test"):
            raise ValueError(f"VoxelizeDetection mode must be 'train' or 'test', got {mode!r}")
        self.voxel_size, self.mode = voxel_size, mode

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        coord = np.asarray(data["coord"], dtype=np.float64)
        color = np.asarray(data["color"], dtype=np.float64)
        voxels, inverse, counts = unique_rows(np.floor(coord / self.voxel_size).astype(np.int64))
        if self.mode == "train":
            if rng is None:
                raise ValueError("VoxelizeDetection(mode='train') draws one point per voxel: pass an rng")
            rep = voxel_random_point(inverse, counts, rng)
            xyz, voxel_color = coord[rep], color[rep]
        else:
            order, starts = points_by_voxel(inverse, counts)
            rep = order[starts]
            xyz = voxel_mean(coord, inverse, counts)
            voxel_color = voxel_mean(color, inverse, counts)
        mask = np.asarray(data["vote_mask"]).astype(np.int64)[rep]
        ends = np.tile(coord[rep], 3) + np.asarray(data["vote"], dtype=np.float64)[rep]
        vote = np.where(mask[:, None] == 1, ends - np.tile(xyz, 3), 0.0)
        out = {key: value for key, value in data.items() if key not in POINT_KEYS}
        out.update(coord=voxels.astype(np.int32), xyz=xyz.astype(np.float32),
                   color=(voxel_color / 255.0).astype(np.float32),
                   segment=np.asarray(data["segment"]).astype(np.int64)[rep], vote=vote.astype(np.float32),
                   vote_mask=mask, gt_boxes=np.asarray(data["gt_boxes"], np.float32).reshape(-1, 7),
                   gt_labels=np.asarray(data["gt_labels"], np.int64).reshape(-1))
        return out


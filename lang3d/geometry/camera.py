"""Camera and voxel geometry shared by the data layer and the models.

Conventions: pinhole intrinsics ``K`` as [3,3] or [4,4] (only the top-left 3×3 is used), poses as
camera-to-world [4,4] in the OpenCV convention (x right, y down, z forward), coordinates in metres.
"""
from __future__ import annotations

import numpy as np

from lang3d.geometry.voxel_grid import unique_rows


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics [3,3] of an image resized from ``from_size`` to ``to_size`` (both (width, height))."""
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64)[:3, :3].copy()
    out[0, :] *= sx
    out[1, :] *= sy
    # pixel centres: u' + 0.5 = (u + 0.5) * s  ->  cx' = (cx + 0.5) * s - 0.5
    out[0, 2] = (K[0][2] + 0.5) * sx - 0.5
    out[1, 2] = (K[1][2] + 0.5) * sy - 0.5
    return out


def backproject_depth(depth: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lift every pixel with depth > 0 to world coordinates.

    depth: [h, w] metres (0 = invalid). Returns (points [M,3] float64 metres, pixel [M,2] int64 (row, col)).
    """
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols].astype(np.float64)
    fx, fy, cx, cy = K[0][0], K[1][1], K[0][2], K[1][2]
    cam = np.stack([(cols - cx) * z / fx, (rows - cy) * z / fy, z], axis=1)
    world = cam @ np.asarray(cam_to_world)[:3, :3].T + np.asarray(cam_to_world)[:3, 3]
    return world, np.stack([rows, cols], axis=1)


def project_points(points: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points [N,3] into a camera (Eq. 2: [u v 1]^T ~ K T^-1 [x y z 1]^T).

    Returns (uv [N,2] float64 pixel coordinates (column, row), z [N] metres along the optical axis).
    """
    T = np.asarray(cam_to_world, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    cam = (np.asarray(points, dtype=np.float64) - t) @ R  # R^T (p - t), row-vector form
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0][0] * cam[:, 0] / z + K[0][2]
        v = K[1][1] * cam[:, 1] / z + K[1][2]
    return np.stack([u, v], axis=1), z


def voxelize(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantise points [N,3] metres into voxels of edge ``voxel_size`` metres.

    Returns (coords [V,3] int32 voxel indices floor(p / voxel_size), lexicographically sorted, inverse [N] int64 voxel
    of each point).
    """
    grid = np.asarray(points) / voxel_size
    coords, inverse, _ = unique_rows(np.floor(grid, out=grid).astype(np.int64))
    return coords.astype(np.int32), inverse


def voxel_centres(coords: np.ndarray, voxel_size: float) -> np.ndarray:
    """Centres [V,3] metres of integer voxel coordinates [V,3]."""
    return (np.asarray(coords, dtype=np.float64) + 0.5) * voxel_size


def render_depth(uv: np.ndarray, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Z-buffer the nearest of the points projected at ``uv`` [N,2] (column, row) with depths ``z`` [N] metres
    (``project_points``): [H,W] float32 metres, 0 where no point lands. size = (width, height)."""
    width, height = size
    col = np.floor(uv[:, 0] + 0.5).astype(np.int64)
    row = np.floor(uv[:, 1] + 0.5).astype(np.int64)
    keep = (z > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    out = np.full(height * width, np.inf)
    np.minimum.at(out, row[keep] * width + col[keep], z[keep])
    out[np.isinf(out)] = 0.0
    return out.reshape(height, width).astype(np.float32)

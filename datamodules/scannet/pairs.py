"""One 2D-3D training pair from one RGB-D frame (Text4Point Sec. 3.3, Eq. 2).

The frame's depth map is back-projected to world coordinates (V_i), voxelised, and every voxel centre is
projected back into the frame: a voxel whose projected depth agrees with the depth map within
``depth_tolerance`` and that lands inside the colour image is a positive pixel-voxel pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lang3d.data.transforms import voxel_mean
from lang3d.geometry.camera import (backproject_depth, project_points, render_depth, scale_intrinsics, voxel_centres,
                                    voxelize)


@dataclass(frozen=True)
class PairConfig:
    """How frames become 2D-3D pairs. image_size = (height, width) of the image fed to CLIP."""

    image_size: tuple[int, int] = (240, 320)
    voxel_size: float = 0.025
    depth_tolerance: float = 0.02
    min_pairs: int = 64


def build_frame_pair(image: np.ndarray, color_size: tuple[int, int], depth: np.ndarray, cam_to_world: np.ndarray,
                     K_color: np.ndarray, K_depth: np.ndarray, cfg: PairConfig) -> dict[str, np.ndarray]:
    """Build the pair of one frame.

    image: uint8 [H,W,3] the colour frame resized to cfg.image_size (``Scene.color_resized``); color_size: (width,
    height) of the stored colour frames, whose intrinsics are K_color; depth: float32 [h,w] metres (0 = invalid),
    intrinsics K_depth; the colour and depth cameras share ``cam_to_world`` (as ScanNet's loaders assume).
    Returns a dict of numpy arrays:
      image  uint8 [H,W,3] the given image
      depth  float32 [H,W] metres, the frame's points z-buffered into the image (0 = unknown)
      coord  int32 [V,3] voxel coordinates (world / voxel_size, floored), lexicographically sorted
      color  float32 [V,3] mean colour of each voxel's points, in [0,1]
      pairs  int64 [M,3] (voxel index, row, col) with row/col at image resolution
    """
    H, W = cfg.image_size
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [{H},{W},3] (cfg.image_size), got {image.dtype} {image.shape}")
    K_img = scale_intrinsics(K_color, color_size, (W, H))

    points, _ = backproject_depth(depth, K_depth, cam_to_world)
    if len(points) == 0:
        return _empty_pair(image)

    # colour of each point: the image at the point's projection (clamped to the border)
    uv, z = project_points(points, K_img, cam_to_world)
    col = np.clip(np.floor(uv[:, 0] + 0.5), 0, W - 1).astype(np.int64)
    row = np.clip(np.floor(uv[:, 1] + 0.5), 0, H - 1).astype(np.int64)
    point_rgb = image[row, col].astype(np.float64) / 255.0

    coord, inverse = voxelize(points, cfg.voxel_size)
    voxel_rgb = voxel_mean(point_rgb, inverse, np.bincount(inverse, minlength=len(coord)))

    pairs = correspondences(coord, depth, cam_to_world, K_depth, K_img, (H, W), cfg.voxel_size, cfg.depth_tolerance)
    return {
        "image": image,
        "depth": render_depth(uv, z, (W, H)),
        "coord": coord,
        "color": voxel_rgb.astype(np.float32),
        "pairs": pairs,
    }


def correspondences(coord: np.ndarray, depth: np.ndarray, cam_to_world: np.ndarray, K_depth: np.ndarray,
                    K_img: np.ndarray, image_hw: tuple[int, int], voxel_size: float, tolerance: float) -> np.ndarray:
    """Pixel-voxel pairs: [M,3] int64 (voxel index, row, col in the image of size image_hw).

    A voxel pairs with the pixel its centre projects to when (a) the centre is in front of the camera,
    (b) it projects inside the depth map onto a valid depth d with |z - d| <= tolerance, and (c) it
    projects inside the image.
    """
    centres = voxel_centres(coord, voxel_size)
    h, w = depth.shape
    uv_d, z = project_points(centres, K_depth, cam_to_world)
    col_d = np.floor(uv_d[:, 0] + 0.5)
    row_d = np.floor(uv_d[:, 1] + 0.5)
    ok = (z > 0) & (col_d >= 0) & (col_d < w) & (row_d >= 0) & (row_d < h)
    idx = np.nonzero(ok)[0]
    d = depth[row_d[idx].astype(np.int64), col_d[idx].astype(np.int64)]
    idx = idx[(d > 0) & (np.abs(z[idx] - d) <= tolerance)]

    H, W = image_hw
    uv, _ = project_points(centres[idx], K_img, cam_to_world)
    col = np.floor(uv[:, 0] + 0.5)
    row = np.floor(uv[:, 1] + 0.5)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    return np.stack([idx[inside], row[inside], col[inside]], axis=1).astype(np.int64)


def _empty_pair(image: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "image": image,
        "depth": np.zeros(image.shape[:2], np.float32),
        "coord": np.zeros((0, 3), np.int32),
        "color": np.zeros((0, 3), np.float32),
        "pairs": np.zeros((0, 3), np.int64),
    }

"""Point-cloud operations in plain PyTorch (no custom CUDA build): farthest-point sampling, kNN, ball query,
gathering and unit-sphere normalisation. A NumPy FPS with the same result serves CPU data loaders, where it is
much faster.

FPS starts at ``start`` (index 0 by default, like ``pointnet2_ops``), then repeatedly takes the point farthest
(squared Euclidean distance, float32 sums dx² + dy² + dz²) from those chosen; ties go to the lowest index.
"""
from __future__ import annotations

import numpy as np
import torch


def farthest_point_sample(xyz: torch.Tensor, num_samples: int, start: int | torch.Tensor = 0) -> torch.Tensor:
    """FPS over a batch: xyz [B,N,3] -> indices [B,M] int64 (M = ``num_samples`` <= N), on xyz's device.

    ``start``: first index, one int for all clouds or [B] int64.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"farthest_point_sample expects [B,N,3] points, got {tuple(xyz.shape)}")
    batch, n = xyz.shape[:2]
    if not 0 < num_samples <= n:
        raise ValueError(f"farthest_point_sample: cannot take {num_samples} of {n} points")
    pts = xyz.detach().float().transpose(1, 2).contiguous()  # [B,3,N]
    far = torch.as_tensor(start, dtype=torch.int64, device=xyz.device).expand(batch).reshape(batch, 1).clone()
    out = torch.empty(batch, num_samples, dtype=torch.int64, device=xyz.device)
    dist = torch.full((batch, n), float("inf"), device=xyz.device)
    d = torch.empty(batch, n, device=xyz.device)
    t = torch.empty(batch, n, device=xyz.device)
    for i in range(num_samples):
        out[:, i:i + 1] = far
        centre = torch.gather(pts, 2, far[:, None].expand(batch, 3, 1))  # [B,3,1]
        torch.sub(pts[:, 0], centre[:, 0], out=d).mul_(d)
        for axis in (1, 2):  # square then add, as the NumPy version (no fused multiply-add): identical sums
            d.add_(torch.sub(pts[:, axis], centre[:, axis], out=t).mul_(t))
        torch.minimum(dist, d, out=dist)
        far = dist.argmax(-1, keepdim=True)
    return out


def farthest_point_sample_np(xyz: np.ndarray, num_samples: int, start: int = 0) -> np.ndarray:
    """FPS of one cloud in NumPy: xyz [N,3] -> indices [M] int64; same result as ``farthest_point_sample``."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"farthest_point_sample_np expects [N,3] points, got {xyz.shape}")
    n = len(xyz)
    if not 0 < num_samples <= n:
        raise ValueError(f"farthest_point_sample_np: cannot take {num_samples} of {n} points")
    pts = np.ascontiguousarray(xyz.T, dtype=np.float32)  # [3,N]: contiguous rows make every step vectorised
    dist = np.full(n, np.inf, dtype=np.float32)
    d = np.empty(n, dtype=np.float32)
    t = np.empty(n, dtype=np.float32)
    out = np.empty(num_samples, dtype=np.int64)
    far = int(start)
    for i in range(num_samples):
        out[i] = far
        np.subtract(pts[0], pts[0, far], out=d)
        np.multiply(d, d, out=d)
        for axis in (1, 2):
            np.subtract(pts[axis], pts[axis, far], out=t)
            np.multiply(t, t, out=t)
            d += t
        np.minimum(dist, d, out=dist)
        far = int(dist.argmax())
    return out


def knn(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest ``points`` [B,N,3] of each ``query`` point [B,M,3] -> indices [B,M,k] int64, nearest first.

    Distances are exact differences (``torch.cdist`` without the matrix-product shortcut), so neighbours a hair
    apart are not reordered by cancellation; the [B,M,N] distance matrix is held in memory.
    """
    if query.dim() != 3 or points.dim() != 3 or query.shape[0] != points.shape[0]:
        raise ValueError(f"knn expects query [B,M,3] and points [B,N,3], got {tuple(query.shape)} and "
                         f"{tuple(points.shape)}")
    if not 0 < k <= points.shape[1]:
        raise ValueError(f"knn: cannot take {k} neighbours among {points.shape[1]} points")
    dist = torch.cdist(query.detach().float(), points.detach().float(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def ball_query(query: torch.Tensor, points: torch.Tensor, radius: float, num_samples: int) -> torch.Tensor:
    """PointNet++ ball query: for each ``query`` point [B,M,3], the indices of the first ``num_samples`` points of
    ``points`` [B,N,3] (in index order, not by distance) lying strictly within ``radius`` metres
    (``|p - q| < radius``) -> [B,M,S] int64 on query's device (S = ``num_samples``).

    As ``pointnet2_ops``: when fewer than S points are within reach, the remaining slots repeat the first one
    found; a query with no point within reach gets index 0 in every slot (pointnet2's zero-initialised output),
    which callers that query a cloud's own points never meet. Holds the [B,M,N] distance matrix in memory.
    """
    if query.dim() != 3 or points.dim() != 3 or query.shape[0] != points.shape[0] or query.shape[-1] != 3 \
            or points.shape[-1] != 3 or points.shape[1] == 0:
        raise ValueError(f"ball_query expects query [B,M,3] and points [B,N>0,3], got {tuple(query.shape)} and "
                         f"{tuple(points.shape)}")
    if num_samples < 1 or not radius > 0:
        raise ValueError(f"ball_query needs num_samples >= 1 and radius > 0, got {num_samples} and {radius}")
    n = points.shape[1]
    dist = torch.cdist(query.detach().float(), points.detach().float(), compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.arange(n, device=query.device).expand_as(dist)
    key = torch.where(dist < radius, order, torch.full_like(order, n))   # n: out of reach
    first = key.topk(min(num_samples, n), dim=-1, largest=False, sorted=True).values
    if first.shape[-1] < num_samples:
        first = torch.cat([first, first.new_full((*first.shape[:2], num_samples - n), n)], dim=-1)
    found = first < n
    fill = torch.where(found[..., :1], first[..., :1], torch.zeros_like(first[..., :1]))
    return torch.where(found, first, fill.expand_as(first))


def index_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather per batch: points [B,N,C], idx [B,*S] int64 -> [B,*S,C]."""
    batch = points.shape[0]
    flat = idx.reshape(batch, -1)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, points.shape[-1]))
    return out.reshape(*idx.shape, points.shape[-1])


def normalize_unit_sphere(points):
    """Centre on the centroid and scale so the farthest point lies on the unit sphere (ULIP's ``pc_normalize``).

    points [..., N, 3] (numpy array or tensor, same type back). A cloud whose points all coincide is only centred.
    """
    if isinstance(points, torch.Tensor):
        centred = points - points.mean(-2, keepdim=True)
        radius = centred.norm(dim=-1).amax(-1, keepdim=True)[..., None]
        return centred / torch.where(radius > 0, radius, torch.ones_like(radius))
    points = np.asarray(points)
    centred = points - points.mean(-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(-1, keepdims=True)[..., None]
    return (centred / np.where(radius > 0, radius, 1)).astype(points.dtype, copy=False)

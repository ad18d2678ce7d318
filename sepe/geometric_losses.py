"""SEPE's geometric terms on the predicted clean cloud x̂0 (paper Eq. 7): Chamfer, colour, Laplacian, uniformity.

Clouds are ``[B,6,N]`` in Point-E data units: xyz (roughly [-0.5, 0.5]) then RGB as 0..255 floats (the sampler's
unscaled output). Colour differences are measured in Point-E's model scale, RGB / 127.5 - 1 in [-1, 1]
(``COLOR_SCALE``). Every term returns one value per cloud ``[B]``; sums over points are means (the paper's
sum over i divided by N), so the λ weights do not depend on the number of points. Neighbour indices come from
``lang3d.data.point_ops.knn`` (no gradient); distances are recomputed from the gathered points, so gradients
reach every point involved.
"""
from __future__ import annotations

import torch

from lang3d.data.point_ops import index_points, knn

COLOR_SCALE = 1.0 / 127.5  # RGB 0..255 -> Point-E's [-1, 1] scale (differences only: the -1 offset cancels)


def _check_cloud(name: str, cloud: torch.Tensor, what: str) -> None:
    """Raise ValueError naming the loss and the tensor unless cloud is float [B,6,N], N > 0."""
    if cloud.ndim != 3 or cloud.shape[1] != 6 or not cloud.is_floating_point() or cloud.shape[2] == 0:
        raise ValueError(f"{name}: {what} must be float [B, 6, N] (xyz + RGB 0..255, N > 0), got "
                         f"{tuple(cloud.shape)} {cloud.dtype}")


def _check_pair(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    _check_cloud(name, pred, "pred")
    _check_cloud(name, target, "target")
    if pred.shape[0] != target.shape[0]:
        raise ValueError(f"{name}: pred and target batch sizes differ ({pred.shape[0]} vs {target.shape[0]})")


def _check_k(name: str, k: int, n: int) -> None:
    if not 0 < k < n:
        raise ValueError(f"{name}: k must be in [1, N - 1] = [1, {n - 1}] (neighbours exclude the point itself), "
                         f"got {k}")


def _xyz(cloud: torch.Tensor) -> torch.Tensor:
    return cloud[:, :3].transpose(1, 2)   # [B,N,3]


def _neighbours(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest other points of each point of xyz [B,N,3] -> their coordinates [B,N,k,3]."""
    idx = knn(xyz, xyz, k + 1)[:, :, 1:]   # the nearest is the point itself (distance 0)
    return index_points(xyz, idx)


def _distance(diff: torch.Tensor, squared: bool) -> torch.Tensor:
    """Vectors [..., 3] -> squared or plain Euclidean lengths [...]; the plain norm has gradient 0 at 0."""
    return diff.square().sum(-1) if squared else torch.linalg.vector_norm(diff, dim=-1)


def chamfer_distance(pred: torch.Tensor, target: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """Symmetric Chamfer distance between the xyz of pred [B,6,N] and target [B,6,M] -> [B]:
    mean_i min_j d(p_i, q_j) + mean_j min_i d(q_j, p_i), with d the squared (``squared``, data units²) or plain
    (data units) Euclidean distance."""
    _check_pair("chamfer_distance", pred, target)
    p, q = _xyz(pred), _xyz(target)
    p_to_q = _distance(p - index_points(q, knn(p, q, 1)[..., 0]), squared)    # [B,N]
    q_to_p = _distance(q - index_points(p, knn(q, p, 1)[..., 0]), squared)    # [B,M]
    return p_to_q.mean(1) + q_to_p.mean(1)


def color_loss(pred: torch.Tensor, target: torch.Tensor, color_scale: float = COLOR_SCALE) -> torch.Tensor:
    """Colour L2 of pred [B,6,N] against target [B,6,M] -> [B]: mean over predicted points of the squared RGB
    difference (summed over the 3 channels, times ``color_scale``², i.e. in [-1, 1] units by default) to the
    colour of the nearest target point by xyz. The neighbour choice carries no gradient; colours do."""
    _check_pair("color_loss", pred, target)
    idx = knn(_xyz(pred), _xyz(target), 1)[..., 0]                                   # [B,N]
    nearest = index_points(target[:, 3:].transpose(1, 2), idx)                       # [B,N,3]
    return ((pred[:, 3:].transpose(1, 2) - nearest) * color_scale).square().sum(-1).mean(1)


def laplacian_smoothness(pred: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Laplacian smoothness of pred [B,6,N] -> [B] (data units²): mean_i || x_i - mean_{j in N_k(i)} x_j ||², N_k(i)
    the k nearest other points of x_i (paper Eq. for L_smooth, divided by N)."""
    _check_cloud("laplacian_smoothness", pred, "pred")
    _check_k("laplacian_smoothness", k, pred.shape[2])
    xyz = _xyz(pred)
    return (xyz - _neighbours(xyz, k).mean(2)).square().sum(-1).mean(1)


def uniformity(pred: torch.Tensor, radius: float | torch.Tensor, k: int = 8) -> torch.Tensor:
    """Uniform spacing of pred [B,6,N] -> [B] (data units²): mean_i (1/k) sum_{j in N_k(i)} (||x_i - x_j|| - r)²
    (paper Eq. for L_uniform, divided by N). ``radius`` r: the wanted spacing in data units, a float or one per
    cloud [B] (e.g. ``mean_neighbour_distance(target, k)``)."""
    _check_cloud("uniformity", pred, "pred")
    _check_k("uniformity", k, pred.shape[2])
    r = torch.as_tensor(radius, dtype=pred.dtype, device=pred.device)
    if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != pred.shape[0]) or bool((r < 0).any()):
        raise ValueError(f"uniformity: radius must be a non-negative float or [B] = [{pred.shape[0]}] tensor, got "
                         f"{tuple(r.shape)} {r.tolist()}")
    xyz = _xyz(pred)
    dist = _distance(xyz[:, :, None] - _neighbours(xyz, k), squared=False)         # [B,N,k]
    return (dist - r.reshape(-1, 1, 1)).square().mean((1, 2))


def mean_neighbour_distance(cloud: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Mean distance from each point of cloud [B,6,N] to its k nearest other points -> [B] data units (no gradient):
    the spacing of a reference cloud, a natural ``radius`` for ``uniformity``."""
    _check_cloud("mean_neighbour_distance", cloud, "cloud")
    _check_k("mean_neighbour_distance", k, cloud.shape[2])
    xyz = _xyz(cloud.detach())
    return _distance(xyz[:, :, None] - _neighbours(xyz, k), squared=False).mean((1, 2))

"""PointGroup's instance-segmentation heads and losses (Jiang et al. 2020, Sec. 3.2 and 3.4): the per-point offset
to the instance centre (L1 + direction losses, Eq. 2-3) and ScoreNet, which scores a cluster from its points'
features (soft IoU targets, Eq. 7-8)."""
from __future__ import annotations

import torch
from torch import nn


def batch_instance_ids(room: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """Ids unique over a batch [N] int64 from each row's room in the batch [N] and the room's own instance id [N]
    (-1: none, kept): equal exactly where both are equal."""
    span = int(instance.max().clamp(min=0)) + 1 if instance.numel() else 1
    return torch.where(instance >= 0, room.long() * span + instance.long(), -1)


def instance_centres(coord: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """Centre of each point's instance: [N, 3], the mean of coord [N, 3] over the points sharing its id in
    instance [N] int64 (ids unique over the whole batch; rows with a negative id get their own coordinate)."""
    valid = instance >= 0
    ids, inverse = torch.unique(instance[valid], return_inverse=True)
    sums = torch.zeros(len(ids), 3, dtype=coord.dtype, device=coord.device).index_add_(0, inverse, coord[valid])
    counts = torch.bincount(inverse, minlength=len(ids)).to(coord.dtype)
    centres = coord.clone()
    centres[valid] = (sums / counts[:, None])[inverse]
    return centres


def offset_losses(offset: torch.Tensor, coord: torch.Tensor,
                  instance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PointGroup's offset losses over the points with an instance (id >= 0):
    L_reg = mean_i ||o_i - (c_i - p_i)||_1 (Eq. 2) and L_dir = -mean_i <o_i / ||o_i||, (c_i - p_i) / ||c_i - p_i||>
    (Eq. 3, norms + 1e-8 as in its code), with c_i the centre of point i's instance.

    offset [N, 3] metres (predicted), coord [N, 3] metres, instance [N] int64 batch-unique ids (-1: none).
    Returns (L_reg metres, L_dir in [-1, 1]); both 0 (connected to ``offset``) without instance points.
    """
    if offset.shape != coord.shape or offset.ndim != 2 or offset.shape[1] != 3 or instance.shape != offset.shape[:1]:
        raise ValueError(f"offset_losses: need offset [N, 3], coord [N, 3], instance [N]; got {tuple(offset.shape)}, "
                         f"{tuple(coord.shape)}, {tuple(instance.shape)}")
    valid = instance >= 0
    target = (instance_centres(coord, instance) - coord)[valid]
    pred = offset[valid]
    count = valid.sum().clamp(min=1)
    l1 = (pred - target).abs().sum(1).sum() / count
    pred_unit = pred / (pred.norm(dim=1, keepdim=True) + 1e-8)
    target_unit = target / (target.norm(dim=1, keepdim=True) + 1e-8)
    direction = -(pred_unit * target_unit).sum(1).sum() / count
    return l1, direction


def score_targets(iou: torch.Tensor, low: float = 0.25, high: float = 0.75) -> torch.Tensor:
    """ScoreNet's soft targets (Eq. 8): 0 for IoU < low, 1 for IoU > high, linear in between. iou [I] -> [I]."""
    if not 0 <= low < high <= 1:
        raise ValueError(f"score_targets: need 0 <= low < high <= 1, got {low}, {high}")
    return ((iou - low) / (high - low)).clamp(0.0, 1.0)


class ScoreNet(nn.Module):
    """Cluster score logit from its points: a point-wise MLP over [feature, position relative to the cluster's
    mean] (``in_channels`` + 3 -> ``hidden`` -> ``hidden``, ReLU), max-pooled over the cluster, then linear -> 1.

    A pooled MLP stands in for PointGroup's small sparse U-Net over the cluster's voxels.
    """

    def __init__(self, in_channels: int, hidden: int = 32):
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(in_channels + 3, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                       nn.ReLU())
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor, coord: torch.Tensor, point_index: torch.Tensor,
                cluster_index: torch.Tensor, num_clusters: int) -> torch.Tensor:
        """features [N, C] and coord [N, 3] metres of the points; clusters as members point_index [M] int64 with
        their cluster_index [M] int64 (0..num_clusters-1, each cluster non-empty) -> logits [num_clusters]."""
        xyz = coord[point_index]
        counts = torch.bincount(cluster_index, minlength=num_clusters).to(xyz.dtype)
        if bool((counts == 0).any()):
            raise ValueError("ScoreNet: every cluster needs at least one point")
        mean = torch.zeros(num_clusters, 3, dtype=xyz.dtype, device=xyz.device).index_add_(0, cluster_index, xyz)
        mean = mean / counts[:, None]
        h = self.point_mlp(torch.cat([features[point_index], xyz - mean[cluster_index]], 1))
        pooled = torch.zeros(num_clusters, h.shape[1], dtype=h.dtype, device=h.device)
        pooled = pooled.scatter_reduce(0, cluster_index[:, None].expand_as(h), h, "amax", include_self=False)
        return self.out(pooled).squeeze(1)

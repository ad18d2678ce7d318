"""Exact earth mover's distance of generated clouds to the ground truth, as a torchmetrics Metric."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from lang3d.data.point_ops import farthest_point_sample, index_points
from sepe.geometric_losses import _check_pair


def earth_movers_distance(pred: np.ndarray, target: np.ndarray) -> float:
    """Exact EMD between two equal-size point sets [N,3]: the minimum over one-to-one matchings of the mean
    Euclidean distance of matched points (data units). Hungarian algorithm, O(N³) time, O(N²) memory."""
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"earth_movers_distance needs two [N,3] sets of equal N, got {pred.shape}, {target.shape}")
    cost = np.linalg.norm(pred[:, None].astype(np.float64) - target[None].astype(np.float64), axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


class EarthMoversDistance(Metric):
    """Mean over clouds of the exact EMD (``earth_movers_distance``, data units) between pred and target xyz.
    Clouds with more than ``num_points`` points are first reduced to ``num_points`` by farthest-point sampling
    (the assignment costs O(N³): 1024 points take ~0.1 s); both clouds must then have the same count."""

    higher_is_better = False

    def __init__(self, num_points: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.num_points = num_points
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def _subsample(self, xyz: torch.Tensor) -> torch.Tensor:
        if xyz.shape[1] <= self.num_points:
            return xyz
        return index_points(xyz, farthest_point_sample(xyz, self.num_points))

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,6,N], target [B,6,M]; after subsampling both must hold the same number of points."""
        _check_pair("EarthMoversDistance", pred, target)
        p = self._subsample(pred[:, :3].transpose(1, 2).float()).cpu().numpy()
        q = self._subsample(target[:, :3].transpose(1, 2).float()).cpu().numpy()
        if p.shape != q.shape:
            raise ValueError(f"EarthMoversDistance: clouds of {p.shape[1]} and {q.shape[1]} points after "
                             f"subsampling to {self.num_points}; exact EMD needs equal counts")
        self.total += sum(earth_movers_distance(a, b) for a, b in zip(p, q))
        self.count += len(p)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()

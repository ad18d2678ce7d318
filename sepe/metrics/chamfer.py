"""Chamfer distance of generated clouds to the ground truth, as a torchmetrics Metric."""
from __future__ import annotations

import torch
from torchmetrics import Metric

from sepe.geometric_losses import chamfer_distance


class ChamferDistanceMetric(Metric):
    """Mean over clouds of ``chamfer_distance(pred, target, squared)`` (data units², or units when not squared)."""

    higher_is_better = False

    def __init__(self, squared: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.squared = squared
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,6,N], target [B,6,M]."""
        self.total += chamfer_distance(pred.float(), target.float(), self.squared).double().sum()
        self.count += pred.shape[0]

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()

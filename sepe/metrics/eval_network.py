"""The evaluation network's pass shared by P-FID and P-IS (point-e's feature extractor)."""
from __future__ import annotations

import torch
from torchmetrics import Metric

from lang3d.data.point_ops import index_points
from lang3d.models.point_e.eval_pointnet import POINT_E_DEVICE_BATCH_SIZE, features_and_logits
from lang3d.training.checkpoint import FrozenPretrained


class EvalNetworkMetric(Metric):
    """Shared by P-FID and P-IS: runs point-e's evaluation network (``lang3d.models.point_e.eval_pointnet``) on clouds
    as point-e's feature extractor does, counting the clouds of each stream (the FPS start index of a cloud is its
    position in its batch of ``device_batch_size``). All clouds are brought to ``num_points`` points (a seeded random
    subset of each; a cloud with fewer points is an error), or, with ``num_points`` None, must all have the same
    count: the network's grouping depends on the point density, so both sets must be sampled alike. The network is
    held frozen (``FrozenPretrained``: eval mode, moves with the metric, never in a checkpoint) and is ``network``."""

    def __init__(self, network: torch.nn.Module, num_points: int | None = None, seed: int = 0,
                 device_batch_size: int = POINT_E_DEVICE_BATCH_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.frozen = FrozenPretrained(network=network)
        self.num_points, self.seed, self.device_batch_size = num_points, seed, device_batch_size
        self._points_seen: int | None = None

    @property
    def network(self) -> torch.nn.Module:
        """The frozen evaluation network."""
        return self.frozen.network

    def reset(self) -> None:
        super().reset()
        self._points_seen = None

    def _features_and_logits(self, clouds: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        if clouds.ndim == 3 and clouds.shape[1] == 6:
            xyz = clouds[:, :3].transpose(1, 2)
        elif clouds.ndim == 3 and clouds.shape[-1] == 3:
            xyz = clouds
        else:
            raise ValueError(f"{type(self).__name__}: clouds must be [B,6,N] (xyz + RGB) or [B,N,3], "
                             f"got {tuple(clouds.shape)}")
        seen = getattr(self, stream)
        xyz = self._same_point_count(xyz.float(), int(seen))
        device = next(self.network.parameters()).device   # the metric's, normally already the clouds'
        out = features_and_logits(self.network, xyz.to(device), int(seen), self.device_batch_size)
        setattr(self, stream, seen + xyz.shape[0])
        return out

    def _same_point_count(self, xyz: torch.Tensor, first_index: int) -> torch.Tensor:
        n = xyz.shape[1]
        if self.num_points is None:
            if self._points_seen is None:
                self._points_seen = n
            if n != self._points_seen:
                raise ValueError(f"{type(self).__name__}: clouds of {n} and {self._points_seen} points; P-FID / P-IS "
                                 "compare clouds of one size: set num_points")
            return xyz
        if n < self.num_points:
            raise ValueError(f"{type(self).__name__}: a cloud of {n} points, fewer than num_points="
                             f"{self.num_points}")
        if n == self.num_points:
            return xyz
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + first_index)
        keep = torch.stack([torch.randperm(n, generator=generator)[:self.num_points] for _ in range(len(xyz))])
        return index_points(xyz, keep.to(xyz.device))

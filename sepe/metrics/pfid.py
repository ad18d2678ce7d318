"""P-FID: Fréchet distance between the evaluation network's features of generated and reference clouds."""
from __future__ import annotations

import torch

from lang3d.metrics.generation import fid_statistics, frechet_distance
from sepe.metrics.eval_network import EvalNetworkMetric


class PointFID(EvalNetworkMetric):
    """P-FID as point-e computes it (``lang3d.metrics.generation``): the Fréchet distance between Gaussians
    (mean, unbiased covariance) fitted to the evaluation network's features (``bn2(fc2(.))``) of real and of
    generated clouds. ``network``: ``lang3d.models.point_e.eval_pointnet.PointNet2SSG`` (point-e's ``pointnet.pt`` via
    ``load_eval_pointnet``, or one trained by ``python -m sepe.pointcloud_features``); ``feature_dim`` checks its
    feature width (default: the network's)."""

    higher_is_better = False

    def __init__(self, network: torch.nn.Module, feature_dim: int | None = None, num_points: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(network, num_points, seed, **kwargs)
        self.feature_dim = feature_dim if feature_dim is not None else network.feature_dim
        for side in ("real", "fake"):
            self.add_state(f"{side}_features", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_seen", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, clouds: torch.Tensor | None = None, real: bool = False, *,
               features: torch.Tensor | None = None) -> None:
        """clouds [B,6,N] or [B,N,3] through the network, or ready ``features`` [B,F]; ``real``: which set."""
        if (clouds is None) == (features is None):
            raise ValueError("PointFID.update: give exactly one of clouds / features")
        side = "real" if real else "fake"
        if features is None:
            features = self._features_and_logits(clouds, f"{side}_seen")[0]
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"PointFID: features must be [B,{self.feature_dim}], got {tuple(features.shape)}")
        getattr(self, f"{side}_features").append(features.double())

    def compute(self) -> torch.Tensor:
        stats = []
        for side in ("real", "fake"):
            feats = getattr(self, f"{side}_features")
            feats = torch.cat(feats) if isinstance(feats, list) else feats
            if feats.shape[0] < 2:
                raise ValueError(f"PointFID: need at least 2 {side} clouds for a covariance, got {feats.shape[0]}")
            stats.append(fid_statistics(feats.cpu().numpy()))
        return torch.tensor(frechet_distance(*stats[0], *stats[1]), dtype=torch.float32)

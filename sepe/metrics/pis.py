"""P-IS: inception score of the evaluation network's class predictions on generated clouds."""
from __future__ import annotations

import torch

from lang3d.metrics.generation import inception_score_splits
from sepe.metrics.eval_network import EvalNetworkMetric


class PointIS(EvalNetworkMetric):
    """P-IS as point-e computes it (``lang3d.metrics.generation.inception_score_splits``): exp(E_x KL(p(y|x) ||
    p(y))) on the softmax of the evaluation network's logits of generated clouds, per consecutive split of
    ``split_size`` clouds (point-e: 5000); ``compute`` -> (mean over splits: point-e's P-IS, their std)."""

    higher_is_better = True

    def __init__(self, network: torch.nn.Module, split_size: int = 5000, num_points: int | None = None,
                 seed: int = 0, **kwargs):
        super().__init__(network, num_points, seed, **kwargs)
        self.split_size = split_size
        self.add_state("logits", [], dist_reduce_fx="cat")
        self.add_state("seen", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, clouds: torch.Tensor | None = None, *, logits: torch.Tensor | None = None) -> None:
        """clouds [B,6,N] or [B,N,3] through the network, or ready ``logits`` [B,K]."""
        if (clouds is None) == (logits is None):
            raise ValueError("PointIS.update: give exactly one of clouds / logits")
        if logits is None:
            logits = self._features_and_logits(clouds, "seen")[1]
        self.logits.append(logits.double())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.cat(self.logits) if isinstance(self.logits, list) else self.logits
        scores = inception_score_splits(torch.log_softmax(logits.double(), -1), self.split_size)
        std = scores.std(unbiased=False) if len(scores) > 1 else torch.zeros((), dtype=scores.dtype)
        return scores.mean().float(), std.float()

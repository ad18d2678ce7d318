"""Per-sample means of evaluation values over every DDP rank, for values that a step computes per batch (its mean
loss over the batch's samples) on ranks that hold different numbers of samples: the uneven last shards of an
evaluation set, a rank whose shard is empty (it evaluates one empty batch), batches whose samples were all skipped.

Lightning's own epoch mean of a value logged with ``sync_dist=True`` and a ``batch_size`` averages the ranks'
weighted sums and their summed batch sizes separately, and the summed batch size is an integer tensor, which gloo's
average truncates: shards of 2 and 1 samples give the sum over 3 samples divided by 1, not by 3. A rank that logs
nothing (no sample) leaves the ranks reducing different keys. ``SampleMeans`` keeps a torchmetrics metric per value,
whose weighted sum and weight are added over the ranks when computed, and every rank logs the same names.
"""
from __future__ import annotations

from typing import Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from lang3d.training.distributed import summed_over_ranks


class WeightedMean(Metric):
    """Σ weight·value / Σ weight over the updates of every rank (float64 sums). NaN values stay (the mean is NaN):
    torchmetrics' ``MeanMetric`` drops them by default and, with ``nan_strategy="disable"``, ignores the weights."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("weighted_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: float) -> None:
        """value: a scalar; weight >= 0."""
        self.weighted_sum += value.detach().to(self.weighted_sum) * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        return (self.weighted_sum / self.weight).float()


class SampleMeans(nn.Module):
    """The named values' means over every sample of every rank, for one evaluation stage. A child of the
    LightningModule that logs them (Lightning logs torchmetrics objects held as its attributes).

    ``update(values, samples)`` per batch: each named value (a scalar, the mean over the batch's ``samples``
    samples) with weight ``samples``; a name missing from ``values`` (a value the batch could not give) gets
    nothing from the batch. ``log(module, prefix)`` once at the epoch's end (``on_<stage>_epoch_end``), a
    collective that every rank calls: logs ``<prefix><name>`` for every name that some rank gave weight (the same
    names on every rank; none gets a mean of no samples), and returns the number of samples over all ranks.
    """

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.means = nn.ModuleDict({name: WeightedMean() for name in names})
        self._weights = dict.fromkeys(self.means, 0)   # this rank's samples per name in this epoch
        self._samples = 0

    def update(self, values: dict[str, torch.Tensor], samples: int) -> None:
        unknown = sorted(set(values) - set(self.means))
        if unknown:
            raise ValueError(f"SampleMeans: values {unknown} are not among its names {list(self.means)}")
        self._samples += samples
        if samples == 0:
            return
        for name, value in values.items():
            self.means[name].update(value, samples)
            self._weights[name] += samples

    def log(self, module: L.LightningModule, prefix: str) -> int:
        names = list(self.means)
        local = torch.tensor([self._weights[name] for name in names] + [self._samples], dtype=torch.int64,
                             device=module.device)
        totals = summed_over_ranks(local).tolist()
        for name, total in zip(names, totals):
            mean = self.means[name]
            if total:
                mean.update(torch.zeros(()), 0)   # an update on every rank, also on one without samples
                module.log(f"{prefix}{name}", mean)   # Lightning computes it (sums over the ranks), then resets it
            else:
                mean.reset()
        self._weights = dict.fromkeys(self.means, 0)
        self._samples = 0
        return totals[-1]

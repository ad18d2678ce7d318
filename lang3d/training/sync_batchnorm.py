"""BatchNorm synchronised across DDP processes, on CPU (gloo) and GPU (nccl) alike, dense and MinkowskiEngine.

In training mode inside an initialised process group of several ranks, the batch statistics are those of the
union of all ranks' batches. Every rank writes its row count n_r, mean m_r [C] and centred sum of squares M2_r [C]
into its own row of a [world, 2C+1] table, ONE autograd-aware all_reduce (sum) fills the table everywhere, and the
ranks combine the rows exactly (Chan et al.: n = Σ n_r, m = Σ n_r m_r / n, M2 = Σ M2_r + n_r (m_r - m)²), which
stays accurate where raw sums of squares would cancel. The all_reduce's backward sums every rank's gradient, so
with DDP's gradient averaging the gradients are those of one BatchNorm over the union batch with the mean of the
ranks' losses. Running statistics follow torch's BatchNorm (momentum or cumulative average, unbiased variance
M2 / (n - 1), ``num_batches_tracked``) and are identical on every rank. In eval mode, outside a process group or
with one rank the layer is plain BatchNorm (``F.batch_norm``).

A rank without data must still join every all_reduce of a step (forward and backward), or the others wait
forever. Within ``rows_left_out(module)`` its layers contribute a zero row (no rows) to the table while taking
part in the all_reduce, so it can run its networks on a placeholder input with a zero-weight loss without
changing the other ranks' statistics, outputs or gradients. An empty input (0 rows) needs no such block.

``convert_sync_batchnorm`` swaps every torch BatchNorm (``TORCH_BATCHNORMS``: BatchNorm1d/2d/3d,
torch.nn.SyncBatchNorm) and every ``ME.MinkowskiBatchNorm`` (ME's own MinkowskiSyncBatchNorm included, which wraps
the CUDA-only torch.nn.SyncBatchNorm) for these layers, sharing parameters and buffers, so state-dict keys do not
change.

Lightning's ``Trainer(sync_batchnorm=True)`` converts torch's BatchNorm classes only, so it leaves these layers
alone (the configs keep it off; README, "Multi-GPU and multi-node").
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import MinkowskiEngine as ME
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

TORCH_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``, differentiable: the backward sums the ranks' gradients (the semantics of
    ``torch.distributed.nn.functional.all_reduce``, deprecated since torch 2.14 for a private module)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


def _count_from_zero_if_absent(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict,
                               *args) -> None:
    """Load-state-dict pre hook: a state dict without ``num_batches_tracked`` written before torch added it
    (no or an older-than-2 version in its metadata) loads as into torch's BatchNorm, the count kept."""
    version = local_metadata.get("version")
    key = prefix + "num_batches_tracked"
    if (version is None or version < 2) and module.track_running_stats and key not in state_dict:
        count = module.num_batches_tracked
        state_dict[key] = count if count.device != torch.device("meta") else torch.tensor(0, dtype=torch.long)


class SyncBatchNorm(nn.Module):
    """BatchNorm over input [N, C], [N, C, L], [N, C, H, W] or [N, C, D, H, W], statistics per channel C over
    all other dimensions and all ranks of ``process_group`` (None: the whole world). Arguments, parameters
    (``weight``, ``bias`` [C]), buffers (``running_mean``, ``running_var`` [C], ``num_batches_tracked``), their
    initial values, state-dict keys and loading as ``torch.nn.BatchNorm1d``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        like, tracked = {"device": device, "dtype": dtype}, track_running_stats
        for name in ("weight", "bias"):
            self.register_parameter(name, nn.Parameter(torch.empty(num_features, **like)) if affine else None)
        for name in ("running_mean", "running_var"):
            self.register_buffer(name, torch.empty(num_features, **like) if tracked else None)
        self.register_buffer("num_batches_tracked", torch.empty((), dtype=torch.long, device=device) if tracked
                             else None)
        self.register_load_state_dict_pre_hook(_count_from_zero_if_absent)
        self.process_group = process_group
        self.rows_left_out = False   # see ``rows_left_out``
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, process_group=None) -> "SyncBatchNorm":
        """A SyncBatchNorm sharing ``bn``'s parameters and buffers (same tensors), in ``bn``'s train/eval mode."""
        out = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, process_group,
                  device="meta")
        for name in ("weight", "bias"):
            setattr(out, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(out, name, getattr(bn, name))
        return out.train(bn.training)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if not 2 <= x.dim() <= 5 or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}) expects input [N, {self.num_features}, *] with "
                             f"2 to 5 dimensions, got {list(x.shape)}")

    def _world(self) -> tuple[int, int]:
        """(world size, this rank) of the process group; (1, 0) without an initialised one."""
        if not (dist.is_available() and dist.is_initialized()):
            return 1, 0
        group = self.process_group or dist.group.WORLD
        return dist.get_world_size(group), dist.get_rank(group)

    def _average_factor(self) -> float:
        """Counts a training batch in ``num_batches_tracked``; the running-average factor as torch's BatchNorm."""
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        world, rank = self._world() if self.training else (1, 0)
        if self.rows_left_out and world == 1:
            raise RuntimeError("SyncBatchNorm: rows can only be left out of the statistics of a training step "
                               "across several processes")
        factor = self._average_factor()
        if world == 1:  # torch's BatchNorm: batch statistics in training or without running ones
            use_batch = self.training or self.running_mean is None
            track = not self.training or self.track_running_stats
            return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                                self.weight, self.bias, use_batch, factor, self.eps)
        mean, var, n = self._union_statistics(x, world, rank)
        if n <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when training, got {int(n)} "
                             f"over {world} ranks (input {list(x.shape)} here)")
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        scale = torch.rsqrt(var + self.eps)                      # y = (x - mean) / sqrt(var + eps) * w + b
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)

    def _union_statistics(self, x: torch.Tensor, world: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean [C] and biased variance [C] over all ranks' rows (differentiable), and the total row count."""
        c = self.num_features
        dims = [0] + list(range(2, x.dim()))
        xs = x if x.dtype in (torch.float32, torch.float64) else x.float()
        n_local = 0 if self.rows_left_out else x.numel() // c
        if n_local:
            var_local, mean_local = torch.var_mean(xs, dim=dims, correction=0)
        else:  # no rows here (an empty batch, or rows left out): zeros, yet in the autograd graph like x, so
            # that this rank's backward joins the all_reduce of the others' backward
            var_local = mean_local = xs.new_zeros(c) + xs.reshape(-1)[:0].sum()
        count = xs.new_full((1,), float(n_local))
        row = torch.cat([count, mean_local, var_local * n_local])
        table = torch.stack([row if r == rank else torch.zeros_like(row) for r in range(world)])
        table = _AllReduceSum.apply(table, self.process_group or dist.group.WORLD)
        counts, means, m2 = table[:, :1].detach(), table[:, 1:c + 1], table[:, c + 1:]
        n = float(counts.sum())
        mean = (counts * means).sum(0) / max(n, 1.0)
        var = (m2 + counts * (means - mean) ** 2).sum(0) / max(n, 1.0)
        return mean, var, n


class SparseSyncBatchNorm(ME.MinkowskiBatchNorm):
    """``SyncBatchNorm`` on the features [N, C] of an ME sparse tensor (or tensor field); returns the same
    coordinates (``coordinate_map_key``, ``coordinate_manager``) with normalised features. The dense layer is
    ``.bn``, as in ``ME.MinkowskiBatchNorm``, so state-dict keys match."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        nn.Module.__init__(self)  # not MinkowskiBatchNorm's, which builds a torch BatchNorm1d as ``bn``
        self.bn = SyncBatchNorm(num_features, eps, momentum, affine, track_running_stats, process_group)

    @classmethod
    def from_batchnorm(cls, module: ME.MinkowskiBatchNorm, process_group=None) -> "SparseSyncBatchNorm":
        """A SparseSyncBatchNorm sharing the parameters and buffers of ``module.bn``, in its train/eval mode."""
        out = cls(module.bn.num_features)
        out.bn = SyncBatchNorm.from_batchnorm(module.bn, process_group)
        return out.train(module.training)


@contextmanager
def rows_left_out(module: nn.Module) -> Iterator[None]:
    """Within the block, every ``SyncBatchNorm`` of ``module`` (sparse ones included) leaves its input's rows out
    of the union statistics: it joins the all_reduce with a count of 0 and normalises its input with the other
    ranks' statistics. For a rank without data that runs a zero-weight training step on a placeholder input."""
    layers = [m for m in module.modules() if isinstance(m, SyncBatchNorm)]
    for layer in layers:
        layer.rows_left_out = True
    try:
        yield
    finally:
        for layer in layers:
            layer.rows_left_out = False


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace, in place, every ME BatchNorm and torch BatchNorm (``TORCH_BATCHNORMS``) of ``module`` that is not
    already a ``SparseSyncBatchNorm`` / ``SyncBatchNorm`` by one, sharing parameters and buffers. Returns ``module``
    (or its replacement when ``module`` itself is such a layer)."""
    if isinstance(module, ME.MinkowskiBatchNorm) and not isinstance(module, SparseSyncBatchNorm):
        return SparseSyncBatchNorm.from_batchnorm(module, process_group)
    if isinstance(module, TORCH_BATCHNORMS):
        return SyncBatchNorm.from_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def sync_batchnorm_under_ddp(module: nn.Module, trainer) -> nn.Module:
    """``convert_sync_batchnorm(module)`` when ``trainer`` runs several processes (any device), else ``module``.
    Call from ``LightningModule.setup`` on the trainable network, before the optimizer is built."""
    return convert_sync_batchnorm(module) if trainer.world_size > 1 else module

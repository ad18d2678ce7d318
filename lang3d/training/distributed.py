"""Collectives for DDP ranks holding different numbers of rows (a batch with skipped samples, the last shard of an
evaluation set, a rank with no data at all), differentiable where a loss needs them.

Every function is a no-op (the local value) without an initialised process group of more than one rank, and a
collective otherwise: every rank must call it, in the same order, with the same trailing shape and dtype.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torchmetrics import Metric


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group; (1, 0) without an initialised one."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def row_counts(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's n, in rank order (``[n]`` on one process)."""
    size, _ = world()
    if size == 1:
        return [int(n)]
    local = torch.tensor([int(n)], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(local) for _ in range(size)]
    dist.all_gather(counts, local)
    return [int(c) for c in counts]


class _GatherRows(torch.autograd.Function):
    """x [n_r, ...] on each rank -> [Σ n_r, ...] in rank order; backward: the gradient of the concatenation
    summed over the ranks (every rank's loss depends on every rank's rows), this rank's rows of it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        rank = dist.get_rank()
        ctx.rows = (sum(counts[:rank]), sum(counts[:rank + 1]))
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start, end = ctx.rows
        return total[start:end], None


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows x [n_r, ...] (n_r may differ, 0 included) concatenated in rank order -> ([Σ n_r, ...],
    index of this rank's first row). Differentiable: gradients reach every rank's x, as in a single-process
    computation over the concatenation whose loss is the sum of the ranks' losses. One process: (x, 0)."""
    size, rank = world()
    if size == 1:
        return x, 0
    counts = row_counts(len(x), x.device)
    return _GatherRows.apply(x, counts), sum(counts[:rank])


def summed_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """x summed element-wise over the ranks, a new tensor on every rank (x itself on one process)."""
    if world()[0] == 1:
        return x
    total = x.clone()
    dist.all_reduce(total)
    return total


def share_list_state_layouts(metric: Metric) -> None:
    """Before ``metric.compute()`` under DDP, a collective that every rank calls: each list state of ``metric`` (a
    torchmetrics state gathered by concatenation) that holds no tensor on this rank gets an empty one [0, ...] with
    the trailing shape and dtype of the rows some other rank holds. torchmetrics sends a rank's empty list state as
    a 1-d float tensor, which its gather cannot join with the other ranks' [n, d] rows or integer rows (a rank
    whose evaluation shard is empty). States no rank holds rows of stay as they are. No-op on one process."""
    size, _ = world()
    if size == 1:
        return
    lists = {name: value for name, value in metric.metric_state.items() if isinstance(value, list)}
    layout = {name: (tuple(parts[0].shape[1:]), parts[0].dtype) for name, parts in lists.items() if parts}
    layouts: list[dict | None] = [None] * size
    dist.all_gather_object(layouts, layout)
    for name, parts in lists.items():
        known = next((other[name] for other in layouts if name in other), None)
        if not parts and known is not None:
            shape, dtype = known
            getattr(metric, name).append(torch.empty((0, *shape), dtype=dtype, device=metric.device))

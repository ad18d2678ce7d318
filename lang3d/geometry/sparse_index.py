"""Row lookups between batched sparse coordinate sets ([N, 4] integers: batch, x, y, z)."""
from __future__ import annotations

import math

import torch

_KEY_RANGE = 1 << 63  # int64 keys in [0, 2^63)


def _check_coordinates(coords: torch.Tensor, name: str) -> None:
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"{name} coordinates must be [N, 4] (batch, x, y, z), got shape {tuple(coords.shape)}")
    if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool:
        raise TypeError(f"{name} coordinates must be an integer tensor, got {coords.dtype}")


def _row_keys(table: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys [T], [Q], equal exactly where the rows are equal.

    Each column is shifted by its minimum over table ∪ query and the columns are packed in mixed radix (their
    extents) when the product of the extents fits in 63 bits: any real batch (1,024 samples of 400 m scenes at
    2.5 cm voxels need 10 + 3·14 bits). Otherwise the keys are the rows' ranks in lexicographic order."""
    parts = [c for c in (table, query) if len(c)]
    if not parts:
        return table[:, 0].long(), query[:, 0].long()
    bounds = [[v.tolist() for v in torch.aminmax(c, dim=0)] for c in parts]
    low = [min(b[0][i] for b in bounds) for i in range(4)]
    extents = [max(b[1][i] for b in bounds) - low[i] + 1 for i in range(4)]
    if math.prod(extents) > _KEY_RANGE:  # coordinates spread over more than 2^63 cells: compare rows exactly
        keys = torch.unique(torch.cat([table, query]).long(), dim=0, return_inverse=True)[1]
        return keys[:len(table)], keys[len(table):]

    def pack(coords: torch.Tensor) -> torch.Tensor:
        keys = coords[:, 0].long() - low[0]
        for i in range(1, 4):
            keys.mul_(extents[i]).add_(coords[:, i].long() - low[i])  # a new tensor; stays in [0, 2^63)
        return keys

    return pack(table), pack(query)


def lookup_rows(table: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Row of ``table`` [T, 4] holding each coordinate of ``query`` [Q, 4]; -1 where absent. Returns [Q] int64.

    Exact for any integer coordinates and batch indices (MinkowskiEngine's int32 range and beyond). The rows
    of ``table`` are expected to be distinct (a sparse tensor's coordinates are)."""
    _check_coordinates(table, "table")
    _check_coordinates(query, "query")
    keys, q = _row_keys(table, query.to(table.device))
    if len(keys) == 0:
        return torch.full_like(q, -1)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    pos = torch.searchsorted(sorted_keys, q).clamp(max=len(keys) - 1)
    found = sorted_keys[pos] == q
    return torch.where(found, order[pos], torch.full_like(q, -1))


def coarsen(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Coordinates [N, 4] of the stride-``stride`` cell holding each voxel: floor(x / s)·s (batch index kept)."""
    out = coords.clone()
    out[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    return out

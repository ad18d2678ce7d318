"""Row lookups between batched sparse coordinate sets ([N, 4] int: batch, x, y, z)."""
from __future__ import annotations

import torch

_BITS = 20  # per spatial axis: coordinates in [-2^19, 2^19) voxels
_OFFSET = 1 << (_BITS - 1)


def coordinate_keys(coords: torch.Tensor) -> torch.Tensor:
    """Pack [N, 4] integer coordinates into unique int64 keys [N]."""
    c = coords.to(torch.int64)
    if c.numel() and (c[:, 1:].abs().max() >= _OFFSET):
        raise ValueError(f"voxel coordinates exceed ±{_OFFSET}: the scene is too large for the chosen voxel size")
    xyz = c[:, 1:] + _OFFSET
    return (((c[:, 0] << _BITS) | xyz[:, 0]) << _BITS | xyz[:, 1]) << _BITS | xyz[:, 2]


def lookup_rows(table: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Row of ``table`` [T, 4] holding each coordinate of ``query`` [Q, 4]; -1 where absent. Returns [Q] int64."""
    keys = coordinate_keys(table)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    q = coordinate_keys(query)
    pos = torch.searchsorted(sorted_keys, q).clamp(max=max(len(keys) - 1, 0))
    if len(keys) == 0:
        return torch.full_like(q, -1)
    found = sorted_keys[pos] == q
    return torch.where(found, order[pos], torch.full_like(q, -1))


def coarsen(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Coordinates [N, 4] of the stride-``stride`` cell holding each voxel: floor(x / s)·s (batch index kept)."""
    out = coords.clone()
    out[:, 1:] = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    return out

"""Kernel offset orders of MinkowskiEngine 0.3/0.4 and 0.5: how a stored kernel ``[K^D, C_in, C_out]`` is indexed.

Both versions store a convolution kernel as ``[kernel volume, C_in, C_out]`` (``[C_in, C_out]`` for volume 1) and
compute ``out[o] += in[o + offset_k] @ W[k]`` (coordinates in voxels × tensor stride); a transposed convolution
uses the same offsets from the coarse point to the fine one. They differ in the order of the offsets ``k``:

- ``HYPERCUBE`` (ME 0.3/0.4 region type 0, ``src/region.cpp`` ``RegionIterator``; ME 0.5 ``HYPER_CUBE``,
  ``src/kernel_region.hpp`` ``kernel_region_iterator``): lexicographic from the lower bound with the **first**
  axis (x) fastest; an odd kernel spans ``-(K//2) .. K//2``, an even one ``0 .. K-1``. Same in both versions.
- ``HYBRID`` (ME 0.3/0.4 only, ``MinkowskiEngine/Common.py`` ``convert_region_type``; what PointContrast's and
  CSC's ``Res16UNet`` BasicBlocks use, via ``ConvType.SPATIAL_HYPERCUBE_TEMPORAL_HYPERCROSS``): custom offsets
  grown from the centre: start with ``[0, .., 0]``; for each HYPERCUBE axis ``d`` in turn, append, for every
  offset so far and every non-zero step ``s`` of that axis in increasing order, the offset with axis ``d`` set to
  ``s``. For 3×3×3: ``(0,0,0), (-1,0,0), (1,0,0), (0,-1,0), (0,1,0), (-1,-1,0), ...`` — not the hypercube order.

A kernel trained with HYBRID offsets therefore needs its first axis permuted to be used as an ME 0.5 HYPER_CUBE
kernel (``hybrid_to_hypercube``); HYPERCUBE kernels carry over unchanged.
"""
from __future__ import annotations

import itertools

import torch


def _steps(kernel_size: int) -> list[int]:
    """Offsets (in units of dilation × tensor stride) along one axis, increasing."""
    return list(range(kernel_size)) if kernel_size % 2 == 0 else list(range(-(kernel_size // 2), kernel_size // 2 + 1))


def hypercube_offsets(kernel_size: int, dimension: int = 3) -> list[tuple[int, ...]]:
    """The HYPERCUBE offset order of ME 0.3/0.4 and 0.5: first axis fastest. [K^D] tuples of D ints."""
    steps = _steps(kernel_size)
    return [tuple(reversed(t)) for t in itertools.product(steps, repeat=dimension)]


def hybrid_offsets(kernel_size: int, dimension: int = 3) -> list[tuple[int, ...]]:
    """ME 0.3/0.4's HYBRID offset order with every axis HYPERCUBE (odd kernel, centred). [K^D] tuples."""
    if kernel_size % 2 == 0:
        raise ValueError(f"HYBRID offsets are centred: the kernel size must be odd, got {kernel_size}")
    offsets = [(0,) * dimension]
    for axis in range(dimension):
        grown = []
        for offset in offsets:
            for step in _steps(kernel_size):
                if step != 0:
                    grown.append(offset[:axis] + (step,) + offset[axis + 1:])
        offsets += grown
    return offsets


def hybrid_to_hypercube(kernel_size: int, dimension: int = 3) -> torch.Tensor:
    """Index [K^D] int64: ``hypercube_kernel = hybrid_kernel[index]`` (row i of the 0.5 kernel is the HYBRID row
    with the same offset)."""
    position = {offset: i for i, offset in enumerate(hybrid_offsets(kernel_size, dimension))}
    return torch.tensor([position[o] for o in hypercube_offsets(kernel_size, dimension)], dtype=torch.int64)


def convert_hybrid_kernel(kernel: torch.Tensor, kernel_size: int, dimension: int = 3) -> torch.Tensor:
    """A kernel [K^D, C_in, C_out] stored with ME 0.4 HYBRID offsets -> the same kernel in ME 0.5 HYPER_CUBE order."""
    volume = kernel_size ** dimension
    if kernel.dim() != 3 or kernel.shape[0] != volume:
        raise ValueError(f"a {kernel_size}^{dimension} kernel must be [{volume}, C_in, C_out], "
                         f"got {tuple(kernel.shape)}")
    return kernel[hybrid_to_hypercube(kernel_size, dimension)].contiguous()

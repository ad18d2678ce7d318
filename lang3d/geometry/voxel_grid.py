"""Unique rows of integer grid coordinates (voxel indices), with the inverse map and counts."""
from __future__ import annotations

import math

import numpy as np

_KEY_RANGE = 1 << 63  # int64 keys in [0, 2^63)


def unique_rows(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique rows of int [P,3] in lexicographic order: the result of ``np.unique(grid, axis=0, return_inverse=True,
    return_counts=True)``, computed through one int64 key per row (a 1-D sort, ~30x faster than ``axis=0``).

    The columns are shifted by their minimum and packed in mixed radix (their extents), which keeps the rows'
    lexicographic order; when the extents' product does not fit in 63 bits the rows are compared exactly instead.
    Returns (rows [V,3] int64, inverse [P] int64, counts [V] int64).
    """
    grid = np.asarray(grid).astype(np.int64, copy=False)
    if len(grid) == 0:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    low = np.array([column.min() for column in grid.T])  # per column: ~20x faster than min(0) on [P,3]
    dims = np.array([column.max() for column in grid.T]) - low + 1
    if math.prod(int(d) for d in dims) > _KEY_RANGE:  # coordinates spread over more than 2^63 cells
        rows, inverse, counts = np.unique(grid, axis=0, return_inverse=True, return_counts=True)
        return rows, inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)
    shifted = grid - low
    keys, inverse, counts = _unique_keys((shifted[:, 0] * dims[1] + shifted[:, 1]) * dims[2] + shifted[:, 2])
    rows = np.stack([keys // (dims[1] * dims[2]), keys // dims[2] % dims[1], keys % dims[2]], 1) + low
    return rows, inverse, counts


def _unique_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` of int64 [P] (inverse and counts as int64).

    Points in scan order (a depth map's pixels, row by row) repeat their voxel in runs: then only the runs' keys
    are sorted (a depth map of ScanNet at 2.5 cm: 79 k runs of 307 k points), with the same result."""
    starts = np.empty(len(key), dtype=bool)
    starts[0] = True
    np.not_equal(key[1:], key[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    if 2 * len(first) > len(key):  # hardly any repeats: sort the points themselves
        keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return keys, inverse.reshape(-1).astype(np.int64), counts.astype(np.int64)
    keys, run_inverse = np.unique(key[first], return_inverse=True)
    inverse = run_inverse.reshape(-1).astype(np.int64)[np.cumsum(starts) - 1]
    return keys, inverse, np.bincount(inverse, minlength=len(keys)).astype(np.int64)

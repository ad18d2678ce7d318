"""Batching of per-sample dicts into sparse point batches, with offsets (Pointcept style).

A sample holds per-point arrays (``coord`` [V,3] int voxel coordinates and per-point features), images
stacked as-is, and index arrays whose first column points into the sample's points (e.g. pixel-voxel pairs).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch


def collate_point_samples(samples: Sequence[dict], point_keys: Sequence[str] = ("color",),
                          stack_keys: Sequence[str] = ("image", "depth"),
                          index_keys: Sequence[str] = ("pairs",), list_keys: Sequence[str] = ()) -> dict:
    """Collate samples; samples carrying a ``skipped`` reason are dropped and counted.

    Returns a dict with
      coord   [ΣV,4] int32 (batch index, x, y, z): MinkowskiEngine's batched coordinate layout
      offset  [B] int64 cumulative point counts (end of each sample)
      <point_keys>  concatenated [ΣV, ...] (floating point as float32, integers kept)
      <stack_keys>  stacked [B, ...]
      <index_keys>  [ΣM, 1 + k] int64 (batch index, point index + offset of its sample, remaining columns)
      <list_keys>   list of B tensors, one per kept sample (floating point as float32), e.g. per-scene boxes
      skipped Counter of reasons of dropped samples;  names  list of kept sample names
    """
    kept = [s for s in samples if "skipped" not in s]
    batch: dict = {"skipped": Counter(s["skipped"] for s in samples if "skipped" in s),
                   "names": [s.get("name", "") for s in kept]}
    coords, offsets, total = [], [], 0
    for b, s in enumerate(kept):
        c = torch.as_tensor(np.asarray(s["coord"]), dtype=torch.int32)
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1))
        offsets.append(total)
        total += len(c)
    batch["coord"] = torch.cat(coords) if coords else torch.zeros((0, 4), dtype=torch.int32)
    batch["offset"] = torch.tensor(offsets[1:] + [total] if kept else [], dtype=torch.int64)
    for key in point_keys:
        batch[key] = _cat([_tensor(s[key]) for s in kept])
    for key in stack_keys:
        batch[key] = torch.stack([_tensor(s[key]) for s in kept]) if kept else torch.zeros(0)
    for key in index_keys:
        parts = []
        for b, (s, start) in enumerate(zip(kept, offsets)):
            idx = torch.as_tensor(np.asarray(s[key]), dtype=torch.int64)
            idx = torch.cat([torch.full((len(idx), 1), b, dtype=torch.int64), idx], 1)
            idx[:, 1] += start
            parts.append(idx)
        batch[key] = _cat(parts)
    for key in list_keys:
        batch[key] = [_tensor(s[key]) for s in kept]
    return batch


def _tensor(x) -> torch.Tensor:
    t = torch.from_numpy(np.array(x))  # a copy: cached arrays may be read-only
    return t.float() if t.is_floating_point() else t


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)

"""Wall-clock timing for the benchmark scripts (CUDA work is synchronised before and after)."""
from __future__ import annotations

import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds one call of ``fn`` takes."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start

"""Wall-clock timing for the benchmark scripts (CUDA work is synchronised before and after), and the record of
their figures for the summary table."""
from __future__ import annotations

import json
import os
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


RECORD_ENV = "LANG3D_BENCH_RECORD"


def record(script: str, figure: str, value: float, unit: str) -> None:
    """Append one benchmark figure as a JSON line to the file named by $LANG3D_BENCH_RECORD (no-op when unset);
    ``benchmarks/summary.py`` turns the file into one table."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"script": script, "figure": figure, "value": float(value), "unit": unit}) + "\n")

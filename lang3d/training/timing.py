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


def seconds_per_call(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3,
                     warmup: int = 1) -> float:
    """Mean seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (allocator, cuDNN, caches)."""
    for _ in range(warmup):
        timed(fn, device)
    return sum(timed(fn, device) for _ in range(repeats)) / repeats


def optimizer_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A training iteration to time: ``loss_fn()``, backward, optimizer step."""
    def step() -> None:
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step

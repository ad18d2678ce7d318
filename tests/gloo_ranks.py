"""Run a function in several CPU processes joined by a gloo process group, for tests of collectives."""
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, work: Callable[[int], Any], store: str, out: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))   # a collective left waiting fails instead of hanging
    torch.save(work(rank), f"{out}.{rank}")
    dist.destroy_process_group()


def on_gloo_ranks(work: Callable[[int], Any], folder: Path, world: int = 2) -> list:
    """``work(rank)`` in ``world`` spawned processes of one gloo group (``work``: a module-level function); returns
    what each rank's call returned, in rank order (passed through ``torch.save`` in ``folder``)."""
    mp.spawn(_run, args=(work, str(folder / "store"), str(folder / "out"), world), nprocs=world, join=True)
    return [torch.load(folder / f"out.{r}", weights_only=False) for r in range(world)]

"""Where a run writes its files (predictions, instances, samples)."""
from __future__ import annotations

from pathlib import Path

import lightning as L


def run_output_dir(trainer: L.Trainer, name: str) -> Path:
    """``<log dir>/<name>`` (the logger's version folder, else ``default_root_dir``).

    ``trainer.log_dir`` is a collective under DDP (rank 0's value is broadcast): call this from a hook every rank
    runs once, such as ``on_test_epoch_start``, never per batch (ranks may hold different numbers of batches).
    """
    return Path(trainer.log_dir or trainer.default_root_dir) / name

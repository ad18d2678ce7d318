"""Writing a run's outputs from callbacks (configured under ``trainer.callbacks``), not from inside the
LightningModule: ``test_step`` returns what is to be written, and a ``BaseTestWriter`` writes it after each batch,
each process the samples it evaluated (so a DDP run writes the same files as a one-process run). Predict outputs
use Lightning's ``BasePredictionWriter`` the same way (``pointbind.writers``, ``sepe.writers``)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L

from lang3d.training.outputs import run_output_dir


class BaseTestWriter(L.Callback, ABC):
    """Writes what ``test_step`` returns under ``<log dir>/<folder>`` (``lang3d.training.outputs.run_output_dir``): the
    test counterpart of Lightning's ``BasePredictionWriter``, which hooks predict only.

    The folder is resolved once per test epoch on every process (``trainer.log_dir`` is a collective under DDP);
    after each test batch ``write(outputs, pl_module)`` receives that batch's ``test_step`` return value.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.output_dir: Path | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.output_dir = run_output_dir(trainer, self.folder)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if outputs is None:
            raise ValueError(f"{type(self).__name__} writes what test_step returns, but "
                             f"{type(pl_module).__name__}.test_step returned None")
        self.write(outputs, pl_module)

    @abstractmethod
    def write(self, outputs: Any, pl_module: L.LightningModule) -> None:
        """Write one test batch's outputs under ``self.output_dir``."""

"""What a killed training run needs to resume exactly, as Lightning callbacks the CLI adds to every run.

* ``RandomStateCheckpoint``: the global random generators (torch, CUDA, NumPy, Python) go into every checkpoint
  and come back right before training resumes, so model-side randomness (dropout, condition dropout) continues
  as in an uninterrupted run. Data-side randomness does not need it: samplers and datasets are seeded per
  (seed, epoch, index) and training loaders resume mid-epoch (``lang3d.data.sampling``).
* ``CheckpointOnSigterm``: on SIGTERM (a scheduler's pre-emption, ``kill``) Lightning finishes the running
  step and stops; this writes ``last.ckpt`` next to the run's other checkpoints at that clean point, so
  ``--ckpt_path last`` continues from it. After SIGKILL the run resumes from its latest periodic checkpoint.

Lightning writes checkpoints atomically (to memory, then one file transaction), so a kill never leaves a
truncated ``.ckpt`` behind.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


class RandomStateCheckpoint(L.Callback):
    """Saves the global random states with each checkpoint (rank zero's, like the rest of the checkpoint) and
    restores them at ``on_train_start`` of a resumed run."""

    def __init__(self):
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = np.random.get_state()  # as tensors and numbers: weights_only loads it
        state = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                           int(has_gauss), float(cached)),
                 "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointOnSigterm(L.Callback):
    """Writes ``<checkpoint dir>/last.ckpt`` when the run stops on SIGTERM (the checkpoint dir of the run's
    ModelCheckpoint, else ``<default_root_dir>/checkpoints``)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        callback = trainer.checkpoint_callback
        directory = Path(callback.dirpath) if callback is not None and callback.dirpath else \
            Path(trainer.default_root_dir) / "checkpoints"
        path = directory / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")

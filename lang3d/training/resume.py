"""What a killed training run needs to resume exactly, as Lightning callbacks and a checkpoint writer the CLI adds to
every run.

* ``RandomStateCheckpoint``: the global random generators (torch, CUDA, NumPy, Python) go into every checkpoint
  and come back right before training resumes, so model-side randomness (dropout, condition dropout) continues
  as in an uninterrupted run. Data-side randomness does not need it: samplers and datasets are seeded per (seed,
  epoch, index), loaders seed their workers from their own generator and make their one global draw per pass
  after this restore, and training loaders resume mid-epoch (``lang3d.data.sampling``).
* ``TrainLoaderStateOnResume``: the training loaders get their saved state back even where Lightning skips that
  (a loader built before the checkpoint's loop state is loaded, as ``trainer.estimated_stepping_batches`` does).
* ``EpochEndCheckpointResume``: a checkpoint written at an epoch's end (ModelCheckpoint's once-per-epoch file,
  SIGTERM after an epoch's last step) resumes at the next epoch's start, also in a run limited by ``max_steps``.
* ``CheckpointOnSigterm``: on SIGTERM (a scheduler's pre-emption, ``kill``) Lightning finishes the running
  training step, or the running batch of a validation inside fit, and stops; this writes ``last.ckpt`` next to the
  run's other checkpoints with the training state as of the last finished step, so ``--ckpt_path last`` continues
  from it (an interrupted validation is run again, whole). After SIGKILL the run resumes from its newest
  checkpoint.
* ``newest_checkpoint``: what ``--ckpt_path last`` resumes from (``lang3d.training.cli``): the newest checkpoint file in
  the run's checkpoint folders. Lightning's own "last" is the newest ``last*.ckpt``, which is one checkpoint
  behind when a SIGKILL lands between ModelCheckpoint's periodic file and its ``last.ckpt`` copy.
* ``AtomicCheckpointIO``: a kill at any moment leaves each checkpoint file either as it was or whole, and no
  partial file anywhere (Lightning's writer stages the file in ``$TMPDIR`` and, across file systems, copies it
  into place, so a kill can leave a partial copy there, or a truncated ``.ckpt``).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lang3d.training.atomic import atomic_write


def global_random_states() -> dict[str, Any]:
    """The global random generators' states (torch, NumPy, Python; CUDA once initialised), as tensors and numbers
    (a ``weights_only`` load reads them)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                       int(has_gauss), float(cached)),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class RandomStateCheckpoint(L.Callback):
    """Saves the global random states with each checkpoint (rank zero's, like the rest of the checkpoint) and
    restores them at ``on_train_start`` of a resumed run. ``at_step_end``: the states at the end of the last
    training step (what a checkpoint of the state as of that step holds; a validation after it draws from them)."""

    def __init__(self):
        self._to_restore: dict[str, Any] | None = None
        self.at_step_end: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return global_random_states()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.at_step_end = global_random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if state is None:
            return
        self.at_step_end = state   # those of the checkpoint's last step, until this run finishes one
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class TrainLoaderStateOnResume(L.Callback):
    """Hands the training loaders the state Lightning saved for them (``state_dict`` of a stateful loader) at
    ``on_train_start`` of a resumed run. Lightning itself loads it only when the fit loop builds its loader after
    the checkpoint's loop state is loaded; a LightningModule whose ``configure_optimizers`` reads
    ``trainer.estimated_stepping_batches`` (a schedule over the run) has the loader built before, and the resumed
    epoch would start from its first batch. Loading the same state twice is harmless: a loader of
    ``lang3d.data.sampling`` begins its pass at its first batch, after this hook."""

    def __init__(self):
        self._to_load: list[dict] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._to_load = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get(
            "combined_loader", [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states, self._to_load = self._to_load, []
        if not states:
            return
        loaders = [loader for loader in CombinedLoader(trainer.train_dataloader).flattened
                   if all(callable(getattr(loader, name, None)) for name in ("state_dict", "load_state_dict"))]
        if len(loaders) != len(states):
            raise RuntimeError(f"the checkpoint holds the state of {len(states)} training loaders, the run has "
                               f"{len(loaders)} stateful ones")
        for loader, state in zip(loaders, states):
            loader.load_state_dict(state)


def _zero_current(progress: dict) -> None:
    """Zeroes every ``current`` counter in a Lightning progress state (nested: an optimizer's step and zero_grad)."""
    for key, value in progress.items():
        if key == "current":
            progress[key] = {name: 0 for name in value}
        elif isinstance(value, dict):
            _zero_current(value)


class EpochEndCheckpointResume(L.Callback):
    """Makes a checkpoint written at an epoch's end resume at the start of the next epoch, whatever limits the run.

    Such a checkpoint (ModelCheckpoint's once-per-epoch file, written in ``on_train_epoch_end``; ``last.ckpt`` of a
    SIGTERM after an epoch's last step) holds the fit loop's counters of a finished epoch: every batch of the epoch
    done, the epoch ready, started and processed, and, inside ``on_train_epoch_end``, not yet completed. Lightning
    2.6 resumes from it correctly only in a run limited by ``max_epochs``. In a run limited by ``max_steps`` it
    resumes every checkpoint as a restart inside the saved epoch: it keeps that epoch's batch counters and counts
    one epoch more than it trains, so the resumed run trains the next epoch's first batch as the saved epoch's
    batch 3 (of 3) or calls its ``on_train_epoch_end`` again, and shuffles every later epoch in the order of the
    epoch after it (the sampler's epoch is the count of processed epochs).

    On load (``on_load_checkpoint``, before Lightning restores the loops from the same dict) this sets such a
    checkpoint's fit-loop state to the one an uninterrupted run has between two epochs: the epoch completed, and the
    per-epoch counters the next epoch starts from cleared (batches, optimizer steps and scheduler steps of the
    epoch, its last-batch flag, the validation batches seen in it). Both limits then resume as the uninterrupted
    run goes on: ``on_train_epoch_start`` of the next epoch, its order, its batches. Checkpoints written inside an
    epoch (step-end, validation-end) are left as they are. Lightning steps a plateau scheduler (``ReduceLROnPlateau``,
    stepped per epoch on a logged metric) after ``on_train_epoch_end``, so a once-per-epoch checkpoint holds it one
    step behind, under either limit (it needs the epoch's metrics, which no checkpoint holds); the project's
    schedules step per optimizer step."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        loop = checkpoint.get("loops", {}).get("fit_loop")
        if not loop or "epoch_progress" not in loop:
            return
        epochs = loop["epoch_progress"]
        if not all(part["ready"] == part["started"] == part["processed"] in (part["completed"],
                                                                              part["completed"] + 1)
                   for part in (epochs["total"], epochs["current"])):
            return  # a checkpoint inside an epoch: Lightning resumes it
        for part in (epochs["total"], epochs["current"]):
            part["completed"] = part["processed"]
        for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress",
                    "epoch_loop.automatic_optimization.optim_progress",
                    "epoch_loop.manual_optimization.optim_step_progress"):
            if key in loop:
                _zero_current(loop[key])
        if "epoch_loop.batch_progress" in loop:
            loop["epoch_loop.batch_progress"]["is_last_batch"] = False
        if "epoch_loop.val_loop.batch_progress" in loop:  # counts the validation batches of one training epoch
            validation = loop["epoch_loop.val_loop.batch_progress"]
            validation["total"] = {name: 0 for name in validation["total"]}


class CheckpointOnSigterm(L.Callback):
    """Writes ``<checkpoint dir>/last.ckpt`` when a fit stops on SIGTERM (the checkpoint dir of the run's
    ModelCheckpoint, else ``<default_root_dir>/checkpoints``), with the training state as of its last finished step.

    Lightning stops after the running training step, or after the running batch of a validation inside fit (its
    sanity check before training writes nothing: no step has finished, and a resumed run's earlier checkpoint stays
    its resume point). A validation changes no weights, optimiser, scheduler, training loader or callback state; the
    checkpoint of a stop inside one rewinds what it moved: the global random states go back to the last step's end
    (``RandomStateCheckpoint.at_step_end``: the validation loader's pass drew from them), and the validation loop's
    progress to that validation's start with its first batch begun, which Lightning resumes as a restart inside a
    validation, from its first batch. The resumed run so runs the interrupted validation whole, with the states the
    uninterrupted run had, and goes on as that run (the same weights, metrics and checkpoints). Such a restart
    leaves Lightning's per-epoch total of validation batches begun one ahead of those completed, which would make a
    later checkpoint of that epoch look like one written inside a validation: every other checkpoint this callback
    sees is written outside a running validation batch, so its total begun is set to the total completed."""

    def __init__(self):
        self._rewind_validation = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        path = sigterm_checkpoint_dir(trainer) / "last.ckpt"
        self._rewind_validation = trainer.validating
        try:
            trainer.save_checkpoint(path)
        finally:
            self._rewind_validation = False
        inside = " (inside a validation: it runs again on resume)" if trainer.validating else ""
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}{inside}; resume with --ckpt_path last")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.val_loop.batch_progress")
        if progress is None:
            return
        if not self._rewind_validation:
            total = progress["total"]
            total["ready"] = total["started"] = total["processed"] = total["completed"]
            return
        for callback in trainer.callbacks:
            if isinstance(callback, RandomStateCheckpoint) and callback.at_step_end is not None:
                checkpoint["callbacks"][callback.state_key] = callback.at_step_end
        # "current" counts this validation's batches, "total" those of the training epoch's validations
        before = progress["total"]["completed"] - progress["current"]["completed"]
        progress["total"] = {"ready": before + 1, "started": before + 1, "processed": before, "completed": before}
        progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["is_last_batch"] = False


def resume_callbacks() -> list[L.Callback]:
    """The callbacks that make a killed run resume exactly; the command adds them to every run
    (``lang3d.training.cli.build_cli``)."""
    return [RandomStateCheckpoint(), TrainLoaderStateOnResume(), EpochEndCheckpointResume(), CheckpointOnSigterm()]


def sigterm_checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where ``CheckpointOnSigterm`` writes: the run's ModelCheckpoint folder, else
    ``<default_root_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if callback is not None and callback.dirpath else \
        Path(trainer.default_root_dir) / "checkpoints"


def newest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest ``.ckpt`` file in the run's checkpoint folders (each checkpoint callback's ``dirpath`` and
    ``sigterm_checkpoint_dir``), by modification time, files written within the same clock tick by global step;
    None when there is none."""
    folders = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)}
    folders.add(sigterm_checkpoint_dir(trainer))
    files = [path for folder in folders if folder.is_dir() for path in folder.glob("*.ckpt") if path.is_file()]
    if not files:
        return None
    times = {path: path.stat().st_mtime_ns for path in files}
    newest = [path for path in files if times[path] == max(times.values())]
    if len(newest) == 1:
        return newest[0]
    return max(newest, key=lambda path: torch.load(path, map_location="cpu", mmap=True,
                                                   weights_only=False).get("global_step", -1))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer for local files, made whole-or-nothing: ``torch.save`` streams into an unnamed
    file in the target's folder (Linux ``O_TMPFILE``), which gets a hidden name only once complete and synced and
    is then moved over the target in one rename. Where unnamed files are not supported, a hidden temporary file
    beside the target (``lang3d.training.atomic``) takes its place. Other file systems (s3://, ...) go through
    Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except (AttributeError, OSError):  # not Linux, or a file system without unnamed files
            with atomic_write(path) as file:
                torch.save(checkpoint, file)
            return
        named = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
                named.unlink(missing_ok=True)
                # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the unnamed file (os.link takes that path
                # when given a directory descriptor)
                try:
                    os.link(f"/proc/self/fd/{file.fileno()}", named.name, dst_dir_fd=folder)
                except OSError:  # some file systems (overlays) refuse to name an unnamed file: EXDEV
                    named = None
            if named is None:
                with atomic_write(path) as fallback:
                    torch.save(checkpoint, fallback)
            else:
                os.replace(named, path)
        finally:
            os.close(folder)

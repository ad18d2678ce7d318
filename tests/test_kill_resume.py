"""Kill a training run mid-epoch (SIGTERM, SIGKILL) and resume it from its last checkpoint: the final weights equal
those of an uninterrupted run, bit for bit (CPU, single-threaded), and every checkpoint file left on disk is whole.

The runs are the real command (``python -m lang3d fit``, Text4Point pre-training on tiny synthetic ScanNet scans)
in subprocesses; a checkpoint is written after every step, and the signal is sent once the step-2 checkpoint of
the first epoch (4 steps) exists, so the run dies in the middle of an epoch. A run limited by ``max_steps`` with
the once-per-epoch checkpoint the configs ship is SIGKILLed as its second epoch begins and resumed from the first
epoch's checkpoint.

At an epoch's boundary, in-process runs of a one-weight model over the project's resumable loader and the
command's resume callbacks check the batches each step trains and the epoch hooks, for both run limits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH, EPOCHS = 4, 2


class SignalAtStep(L.Callback):
    """Sends ``signal`` (a name: "SIGTERM", "SIGKILL") to its own process when training step ``step`` (counted
    from 0 over the whole run) starts, in the first run only (not in a run resumed at or after that step)."""

    def __init__(self, step: int, signal: str):
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


def _command(root: Path, run_dir: Path, resume: bool = False, every_step: bool = True,
             kill: tuple[int, str] | None = None, limit: str = "max_epochs") -> list[str]:
    """The run; ``every_step``: a checkpoint after every step (all kept), else once per epoch, as
    configs/text4point/demo_synthetic.yaml ships it; ``kill``: (step, signal name) for ``SignalAtStep``; ``limit``:
    the run ends after ``max_epochs`` (EPOCHS) or after ``max_steps`` (the same EPOCHS epochs' steps). The
    ModelCheckpoint's arguments are all given: the command line's callback takes those it leaves out from
    pretrain_scannet.yaml's (``every_n_train_steps: 500``)."""
    often = {"filename": "{epoch}-{step}", "every_n_train_steps": 1, "save_top_k": -1} if every_step else \
        {"every_n_train_steps": 0, "every_n_epochs": 1}
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, **often}}
    callbacks = [checkpoint] + ([{"class_path": "test_kill_resume.SignalAtStep",
                                  "init_args": {"step": kill[0], "signal": kill[1]}}] if kill else [])
    limits = (["--trainer.max_epochs", str(EPOCHS)] if limit == "max_epochs" else
              ["--trainer.max_steps", str(EPOCHS * STEPS_PER_EPOCH), "--trainer.max_epochs", "-1"])
    command = [sys.executable, "-m", "lang3d", "fit", "-c", "configs/text4point/pretrain_scannet.yaml",
               "-c", "configs/text4point/demo_synthetic.yaml", "--data.root", str(root), "--data.frame_skip", "1",
               "--data.image_size", "[96, 128]", "--data.voxel_size", "0.05", "--data.num_workers", "0",
               "--data.batch_size", "1", "--data.cache_dir", str(run_dir / "cache"), "--model.width", "0.25",
               "--model.feature_dim", "32",
               "--model.decoder_width", "32", "--model.image_log_interval", "0", *limits,
               "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
               "--trainer.default_root_dir", str(run_dir), "--trainer.callbacks", json.dumps(callbacks)]
    return command + (["--ckpt_path", "last"] if resume else [])


def _env() -> dict[str, str]:
    """Single-threaded; the project and the tests' own callbacks importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == STEPS_PER_EPOCH * EPOCHS
    return state["state_dict"]


def _kill_mid_epoch(command: list[str], run_dir: Path, sig: signal.Signals) -> int:
    """Start the run, send ``sig`` once the step-2 checkpoint exists; returns the exit code (0 after SIGTERM:
    Lightning stops cleanly)."""
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    marker = run_dir / "checkpoints" / "epoch=0-step=2.ckpt"
    deadline = time.monotonic() + 600
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{process.stderr.read()[-4000:]}")
        assert time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.05)
    process.send_signal(sig)
    process.communicate(timeout=600)
    return process.returncode


@pytest.fixture(scope="module")
def uninterrupted(tiny_scannet, tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _run(_command(tiny_scannet, run_dir))
    return _weights(run_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_killed_run_resumes_to_the_same_weights(sig, uninterrupted, tiny_scannet, tmp_path):
    run_dir = tmp_path / "run"
    code = _kill_mid_epoch(_command(tiny_scannet, run_dir), run_dir, sig)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    for path in checkpoints:  # nothing half written: every file is a whole checkpoint
        assert path.suffix == ".ckpt", f"unexpected file {path.name} left in the checkpoint folder"
        torch.load(path, map_location="cpu", weights_only=False)
    stopped_at = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # SIGKILL may land between the step-2 checkpoint and its last.ckpt copy: then last.ckpt is step 1's
    assert 1 <= stopped_at["global_step"] < STEPS_PER_EPOCH, "the interruption should fall inside the first epoch"
    if sig == signal.SIGTERM:  # Lightning stops after the running step; last.ckpt is that clean point
        assert stopped_at["global_step"] == max(int(p.stem.rsplit("step=", 1)[1]) for p in checkpoints
                                                if "step=" in p.stem)
    _run(_command(tiny_scannet, run_dir, resume=True))
    resumed = _weights(run_dir)
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{key} differs after resume")


def test_max_steps_run_resumes_from_the_once_per_epoch_checkpoint(uninterrupted, tiny_scannet, tmp_path):
    """A run limited by ``max_steps`` with ModelCheckpoint as configs/text4point/demo_synthetic.yaml ships it (a
    checkpoint inside each epoch's ``on_train_epoch_end``), SIGKILLed as its second epoch begins, resumes from the
    first epoch's checkpoint to the weights of the uninterrupted run (the same steps, limited by ``max_epochs``)."""
    run_dir = tmp_path / "run"
    command = _command(tiny_scannet, run_dir, every_step=False, kill=(STEPS_PER_EPOCH, "SIGKILL"), limit="max_steps")
    killed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == STEPS_PER_EPOCH
    _run(_command(tiny_scannet, run_dir, resume=True, every_step=False, limit="max_steps"))
    resumed = _weights(run_dir)
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{key} differs after resume")


# ---------------------------------------------------------------- resuming at an epoch's boundary, in-process
class _Interrupted(Exception):
    """Ends a run where a SIGKILL would: after the checkpoints written so far."""


class _SixSamples(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(index)])


class _RecordingModel(L.LightningModule):
    """One weight trained on 6 samples in batches of 2 (the project's resumable loader, shuffled per epoch), with
    dropout from the global generator; ``events`` records ("start", epoch), ("step", epoch, batch index, sample
    ids), ("val", epoch, batch index, sample ids), ("end", epoch). ``interrupt``: (global step, "kill" | "sigterm" |
    "sigterm_in_validation"): at that step's start, end the run as a SIGKILL would, or send this process SIGTERM
    (Lightning finishes the step and stops); or send SIGTERM in the first batch of the validation after that many
    steps (Lightning finishes the batch and stops)."""

    def __init__(self, events: list, interrupt: tuple[int, str] | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.events, self.interrupt = events, interrupt

    def train_dataloader(self):
        from lang3d.data.sampling import sharded_loader
        return sharded_loader(_SixSamples(), self.trainer, batch_size=2, shuffle=True, seed=0, num_workers=0,
                              collate_fn=torch.utils.data.default_collate)

    def val_dataloader(self):
        from lang3d.data.sampling import sharded_loader
        return sharded_loader(_SixSamples(), self.trainer, batch_size=2, shuffle=False, seed=0, num_workers=0,
                              collate_fn=torch.utils.data.default_collate)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_epoch_start(self) -> None:
        self.events.append(("start", self.current_epoch))

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.interrupt in ((self.global_step, "kill"), (self.global_step, "sigterm")):
            if self.interrupt[1] == "kill":
                raise _Interrupted
            os.kill(os.getpid(), signal.SIGTERM)

    def training_step(self, batch, batch_idx):
        self.events.append(("step", self.current_epoch, batch_idx, batch.flatten().tolist()))
        return (torch.nn.functional.dropout(batch, 0.5) * self.weight).square().mean()

    def validation_step(self, batch, batch_idx) -> None:
        self.events.append(("val", self.current_epoch, batch_idx, batch.flatten().tolist()))
        if self.interrupt == (self.global_step, "sigterm_in_validation") and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        self.log("val_loss", (batch * self.weight).square().mean())

    def on_train_epoch_end(self) -> None:
        self.events.append(("end", self.current_epoch))


def _fit_in_process(run_dir: Path, limit: str, validate: bool, interrupt: tuple[int, str] | None = None,
                    resume: bool = False, val_check_interval: int | float = 1.0) -> tuple[list, torch.Tensor]:
    """A 2-epoch run (3 steps an epoch) with the command's resume callbacks and ModelCheckpoint (every checkpoint
    kept; once per epoch, or after each validation with ``val_check_interval`` steps between validations); returns
    its events and final weight."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lang3d.training.resume import resume_callbacks

    torch.manual_seed(0)
    limits = {"max_epochs": 2} if limit == "max_epochs" else {"max_steps": 6, "max_epochs": -1}
    checkpoints = ModelCheckpoint(dirpath=run_dir, save_last=True, save_top_k=-1)
    trainer = L.Trainer(callbacks=[checkpoints, *resume_callbacks()],
                        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        limit_val_batches=1.0 if validate else 0, num_sanity_val_steps=0,
                        val_check_interval=val_check_interval, **limits)
    events: list = []
    model = _RecordingModel(events, interrupt)
    try:
        trainer.fit(model, ckpt_path=run_dir / "last.ckpt" if resume else None)
    except (_Interrupted, SystemExit):  # SystemExit: Lightning's stop on SIGTERM
        pass
    return events, model.weight.detach().clone()


@pytest.mark.parametrize("limit", ["max_epochs", "max_steps"])
@pytest.mark.parametrize("interruption", ["killed_as_epoch_1_begins", "sigterm_on_the_last_step"])
def test_run_resumed_at_an_epoch_boundary_goes_on_as_the_uninterrupted_one(interruption, limit, tmp_path):
    """Resumed from the checkpoint written at epoch 0's end (ModelCheckpoint's once-per-epoch file, with validation
    each epoch, the run SIGKILLed as epoch 1 begins; or ``last.ckpt`` of a SIGTERM during epoch 0's last step), the
    run calls ``on_train_epoch_start`` of epoch 1, trains epoch 1's batches in epoch 1's order and ends with the
    uninterrupted run's weight, whether ``max_epochs`` or ``max_steps`` ends it. Lightning alone resumes a
    ``max_steps`` run as a restart inside epoch 0: it trained epoch 1's first batch as epoch 0's batch 3 and then
    epoch 2's order as epoch 1."""
    validate = interruption == "killed_as_epoch_1_begins"
    reference, weight = _fit_in_process(tmp_path / "reference", limit, validate)
    assert [e for e in reference if e[0] == "step"][0][:3] == ("step", 0, 0)
    assert len([e for e in reference if e[0] != "val"]) == 10
    interrupt = (3, "kill") if interruption == "killed_as_epoch_1_begins" else (2, "sigterm")
    first, _ = _fit_in_process(tmp_path / "run", limit, validate, interrupt)
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert first[:reference.index(("end", 0)) + 1] == reference[:reference.index(("end", 0)) + 1]
    resumed, resumed_weight = _fit_in_process(tmp_path / "run", limit, validate, resume=True)
    assert resumed == reference[reference.index(("start", 1)):]
    torch.testing.assert_close(resumed_weight, weight, rtol=0, atol=0)


@pytest.mark.parametrize("validation", ["epoch_end", "mid_epoch"])
def test_sigterm_during_validation_leaves_the_state_of_the_last_step_and_the_validation_runs_again(validation,
                                                                                                    tmp_path):
    """SIGTERM in the first batch of a validation inside fit (epoch 0's end, after step 3; or mid-epoch, after step
    2 of 3, with a validation every 2 steps): Lightning stops after that batch, and ``last.ckpt`` holds the state as
    of the last finished step. Resumed from it (after a second SIGTERM in the validation it begins with), the run
    validates again from the first batch and trains on as the uninterrupted run: the same events (steps, validation
    batches, epoch hooks; the dropout draws follow the random states saved at the step's end, before the validation
    loader's pass drew) and the same final weight; every checkpoint it writes counts the validation batches begun as
    completed (none looks written inside a validation).
    Before, SIGTERM inside a validation wrote no checkpoint: the run resumed from an older one, or from scratch."""
    step, interval = (3, 1.0) if validation == "epoch_end" else (2, 2)
    reference, weight = _fit_in_process(tmp_path / "reference", "max_epochs", True, val_check_interval=interval)
    run = tmp_path / "run"
    first, _ = _fit_in_process(run, "max_epochs", True, (step, "sigterm_in_validation"), val_check_interval=interval)
    assert first == reference[:len(first)] and first[-1][:3] == ("val", 0, 0)
    assert torch.load(run / "last.ckpt", weights_only=False)["global_step"] == step
    # SIGTERM again, in the validation the resumed run begins with (no training step of its own yet)
    again, _ = _fit_in_process(run, "max_epochs", True, (step, "sigterm_in_validation"), resume=True,
                               val_check_interval=interval)
    assert again == first[-1:]
    resumed, resumed_weight = _fit_in_process(run, "max_epochs", True, resume=True, val_check_interval=interval)
    assert resumed == reference[len(first) - 1:]
    torch.testing.assert_close(resumed_weight, weight, rtol=0, atol=0)
    written = [path for path in run.glob("*.ckpt") if path.name != "last.ckpt"]   # by the resumed run
    assert f"epoch=0-step={step}.ckpt" in {path.name for path in written}
    for path in written:
        loop = torch.load(path, weights_only=False)["loops"]["fit_loop"]
        total = loop["epoch_loop.val_loop.batch_progress"]["total"]
        assert total["ready"] == total["started"] == total["processed"] == total["completed"], (path.name, total)


# ---------------------------------------------------------------- which checkpoint "last" is; writing checkpoints
def test_ckpt_path_last_is_the_newest_checkpoint_even_when_last_ckpt_is_older(tmp_path):
    """A SIGKILL between ModelCheckpoint's periodic file and its last.ckpt copy leaves last.ckpt a step behind:
    ``newest_checkpoint`` (what ``--ckpt_path last`` resumes from) still picks the newest file; files written
    within one clock tick are ordered by their global step."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lang3d.training.resume import newest_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    trainer = L.Trainer(callbacks=[ModelCheckpoint(dirpath=folder)], logger=False, default_root_dir=tmp_path)
    assert newest_checkpoint(trainer) is None
    for name, step, mtime in [("epoch=0-step=1.ckpt", 1, 100), ("last.ckpt", 1, 101), ("epoch=0-step=2.ckpt", 2, 102)]:
        torch.save({"global_step": step}, folder / name)
        os.utime(folder / name, ns=(mtime * 10**9, mtime * 10**9))
    assert newest_checkpoint(trainer) == folder / "epoch=0-step=2.ckpt"
    torch.save({"global_step": 3}, folder / "last.ckpt")
    os.utime(folder / "last.ckpt", ns=(102 * 10**9, 102 * 10**9))  # same tick as step 2's file
    assert newest_checkpoint(trainer) == folder / "last.ckpt"


def test_a_checkpoint_write_killed_at_any_moment_leaves_the_old_file_or_the_new_one_and_nothing_else(tmp_path):
    """SIGKILL a process writing a 64 MB checkpoint with ``AtomicCheckpointIO`` at moments spread over the write:
    the target holds the old or the new checkpoint, whole, and neither its folder nor ``$TMPDIR`` holds anything
    else (Lightning's own writer stages the file in ``$TMPDIR``)."""
    import tempfile

    from lang3d.training.resume import AtomicCheckpointIO

    folder, staging = tmp_path / "checkpoints", tmp_path / "tmpdir"
    folder.mkdir()
    staging.mkdir()
    target = folder / "last.ckpt"
    old, new = {"global_step": 1, "w": torch.zeros(4)}, {"global_step": 2, "w": torch.arange(16 * 2**20.)}

    def write_in_child() -> int:
        pid = os.fork()
        if pid == 0:  # child: write, then leave without running the parent's cleanup
            status = 1
            try:
                tempfile.tempdir = str(staging)
                AtomicCheckpointIO().save_checkpoint(new, target)
                status = 0
            finally:
                os._exit(status)
        return pid

    started = time.monotonic()
    assert os.waitpid(write_in_child(), 0)[1] == 0
    duration = time.monotonic() - started
    assert torch.load(target)["global_step"] == 2
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
        AtomicCheckpointIO().save_checkpoint(old, target)
        pid = write_in_child()
        time.sleep(duration * fraction)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert [p.name for p in folder.iterdir()] == ["last.ckpt"], f"killed at {fraction:.0%} of the write"
        assert list(staging.iterdir()) == [], f"killed at {fraction:.0%} of the write"
        assert torch.load(target)["global_step"] in (1, 2)

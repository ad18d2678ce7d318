"""Kill a training run mid-epoch (SIGTERM, SIGKILL) and resume it from its last checkpoint: the final weights equal
those of an uninterrupted run, bit for bit (CPU, single-threaded), and every checkpoint file left on disk is whole.

The runs are the real command (``python -m lang3d fit``, Text4Point pre-training on tiny synthetic ScanNet scans)
in subprocesses; a checkpoint is written after every step, and the signal is sent once the step-2 checkpoint of
the first epoch (4 steps) exists, so the run dies in the middle of an epoch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH, EPOCHS = 4, 2


def _command(root: Path, run_dir: Path, resume: bool = False) -> list[str]:
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run_dir / "checkpoints"), "filename": "{epoch}-{step}",
                                "every_n_train_steps": 1, "save_top_k": -1, "save_last": True}}
    command = [sys.executable, "-m", "lang3d", "fit", "-c", "configs/text4point/pretrain_scannet.yaml",
               "-c", "configs/text4point/demo_synthetic.yaml", "--data.root", str(root), "--data.frame_skip", "1",
               "--data.image_size", "[96, 128]", "--data.voxel_size", "0.05", "--data.num_workers", "0",
               "--data.batch_size", "1", "--data.cache_dir", str(run_dir / "cache"), "--model.width", "0.25",
               "--model.feature_dim", "32",
               "--model.decoder_width", "32", "--model.image_log_interval", "0", "--trainer.max_epochs", str(EPOCHS),
               "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
               "--trainer.default_root_dir", str(run_dir), "--trainer.callbacks", json.dumps([checkpoint])]
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

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
               "--data.batch_size", "1", "--data.cache_dir", str(run_dir / "cache"), "--model.feature_dim", "32",
               "--model.decoder_width", "32", "--model.image_log_interval", "0", "--trainer.max_epochs", str(EPOCHS),
               "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
               "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
               "--trainer.default_root_dir", str(run_dir), "--trainer.callbacks", json.dumps([checkpoint])]
    return command + (["--ckpt_path", "last"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


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

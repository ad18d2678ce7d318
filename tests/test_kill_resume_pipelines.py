"""Kill SEPE and Point-Bind training runs and resume them with ``--ckpt_path last``: the final weights equal those
of an uninterrupted run, bit for bit, with 0 and 1 data-loader workers, after SIGTERM and SIGKILL, killed in the
middle of an epoch and on an epoch's last step.

The runs are the real command (``python -m lang3d fit``, configs/sepe.yaml and configs/pointbind_demo.yaml at tiny
sizes) in subprocesses, with a checkpoint after every step. The signal comes from the run itself
(``test_kill_resume.SignalAtStep``, a callback the command line adds), at the start of a chosen step, so the
interruption falls at the same point every time: SIGTERM at the start of step s stops the run cleanly after step s
(``last.ckpt`` at s + 1 steps), SIGKILL at the start of step s kills it with the checkpoint of s steps the newest.
After a SIGKILL the test also sets ``last.ckpt`` a step back, as a SIGKILL between ModelCheckpoint's periodic file
and its ``last.ckpt`` copy leaves it, and checks that the run resumes from the newest checkpoint nonetheless. Each
epoch has 3 steps: "mid-epoch" resumes after 2 steps of epoch 0, "last step" after its third, its last.

The default suite runs four cases that cover every axis; the whole matrix is marked slow. Runs with the
once-per-epoch checkpoint the configs ship, limited by ``max_epochs`` or by ``max_steps``, are SIGKILLed as their
second epoch begins and resumed from the first epoch's checkpoint.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_kill_resume import REPO, _env, _run

from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40

STEPS_PER_EPOCH, EPOCHS = 3, 2
STOP_AFTER = {"mid_epoch": 2, "last_step": STEPS_PER_EPOCH}  # steps done when the run is interrupted


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Cap3D-format objects (all 7 in the training split: 3 batches of 2 with drop_last) and ModelNet40 shapes."""
    root = tmp_path_factory.mktemp("data")
    generate_cap3d(root / "cap3d", num_objects=7, views=2, image_size=32, points=512, seed=0)
    generate_modelnet40(root / "modelnet40", train_per_class=1, test_per_class=1, points=512,
                        formats=("resampled",))
    return root


def _pipeline_args(pipeline: str, data: Path, run_dir: Path, num_workers: int) -> list[str]:
    if pipeline == "sepe":
        return ["-c", "configs/sepe.yaml", "--data.root", str(data / "cap3d"), "--data.batch_size", "2",
                "--data.num_workers", str(num_workers), "--data.split_fractions", "[0.9, 0.1]",
                "--model.val_num_samples", "0"]
    alignment, zeroshot = "--data.init_args.alignment.init_args.", "--data.init_args.zeroshot.init_args."
    return ["-c", "configs/pointbind.yaml", "-c", "configs/pointbind_demo.yaml",
            alignment + "root", str(data / "cap3d"), alignment + "num_workers", str(num_workers),
            alignment + "num_points", "256", alignment + "batch_size", "2", alignment + "drop_last", "true",
            alignment + "split_fractions", "[0.9, 0.1]",
            zeroshot + "root", str(data / "modelnet40"), zeroshot + "num_workers", "0", zeroshot + "num_points", "256",
            "--model.init_args.embedding_cache", str(run_dir / "embeddings")]


def _command(pipeline: str, data: Path, run_dir: Path, num_workers: int, kill: tuple[int, str] | None = None,
             resume: bool = False, every_step: bool = True, limit: str = "max_epochs") -> list[str]:
    """The run; ``every_step``: a checkpoint after every step (all kept), else once per epoch, as the configs ship;
    ``limit``: the run ends after ``max_epochs`` (EPOCHS) or after ``max_steps`` (the same EPOCHS epochs' steps,
    no epoch limit)."""
    often = {"filename": "{epoch}-{step}", "every_n_train_steps": 1, "save_top_k": -1} if every_step else {}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, **often}}]
    if kill is not None:
        callbacks.append({"class_path": "test_kill_resume.SignalAtStep",
                          "init_args": {"step": kill[0], "signal": kill[1]}})
    command = [sys.executable, "-m", "lang3d", "fit", *_pipeline_args(pipeline, data, run_dir, num_workers),
               *(["--trainer.max_epochs", str(EPOCHS)] if limit == "max_epochs" else
                 ["--trainer.max_steps", str(EPOCHS * STEPS_PER_EPOCH), "--trainer.max_epochs", "-1"]),
               "--trainer.limit_val_batches", "0",
               "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.logger", "false", "--trainer.default_root_dir", str(run_dir),
               "--trainer.callbacks", json.dumps(callbacks)]
    return command + (["--ckpt_path", "last"] if resume else [])


def _trained(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == STEPS_PER_EPOCH * EPOCHS
    return state["state_dict"]


_references: dict[tuple[str, int], dict[str, torch.Tensor]] = {}


@pytest.fixture
def uninterrupted(data, tmp_path_factory):
    """The uninterrupted run's final weights, one run per (pipeline, num_workers) for the whole module."""
    def weights(pipeline: str, num_workers: int) -> dict[str, torch.Tensor]:
        if (pipeline, num_workers) not in _references:
            run_dir = tmp_path_factory.mktemp(f"uninterrupted_{pipeline}_{num_workers}")
            _run(_command(pipeline, data, run_dir, num_workers))
            _references[pipeline, num_workers] = _trained(run_dir)
        return _references[pipeline, num_workers]
    return weights


def _kill_and_resume(pipeline: str, data: Path, run_dir: Path, num_workers: int, where: str,
                     sig: signal.Signals) -> dict[str, torch.Tensor]:
    stop_after = STOP_AFTER[where]
    at_step = stop_after - 1 if sig == signal.SIGTERM else stop_after  # SIGTERM: the running step still finishes
    killed = subprocess.run(_command(pipeline, data, run_dir, num_workers, kill=(at_step, sig.name)), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL), killed.stderr[-4000:]
    folder = run_dir / "checkpoints"
    stopped = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert stopped["global_step"] == stop_after
    resume_from = folder / "last.ckpt"
    if sig == signal.SIGKILL:  # leave last.ckpt a step behind, as a SIGKILL between ModelCheckpoint's periodic
        # file and its last.ckpt copy does: the run must still resume from the newest checkpoint
        resume_from = folder / f"epoch={(stop_after - 1) // STEPS_PER_EPOCH}-step={stop_after}.ckpt"
        shutil.copy2(folder / f"epoch={(stop_after - 2) // STEPS_PER_EPOCH}-step={stop_after - 1}.ckpt",
                     folder / "last.ckpt")
    resumed = _run(_command(pipeline, data, run_dir, num_workers, resume=True))
    assert f"Restoring states from the checkpoint path at {resume_from}\n" in resumed.stderr
    return _trained(run_dir)


def _assert_same_weights(resumed: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert resumed.keys() == reference.keys()
    differing = [key for key, value in reference.items() if not torch.equal(resumed[key], value)]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:5]}"


MATRIX = [(pipeline, workers, where, sig) for pipeline in ("sepe", "pointbind") for workers in (0, 1)
          for where in ("mid_epoch", "last_step") for sig in (signal.SIGTERM, signal.SIGKILL)]
DEFAULT = [("sepe", 0, "mid_epoch", signal.SIGKILL), ("sepe", 0, "last_step", signal.SIGTERM),
           ("pointbind", 1, "mid_epoch", signal.SIGTERM), ("pointbind", 1, "last_step", signal.SIGKILL)]
CASES = [pytest.param(*case, marks=() if case in DEFAULT else pytest.mark.slow,
                      id=f"{case[0]}-workers{case[1]}-{case[2]}-{case[3].name.lower()}") for case in MATRIX]


@pytest.mark.parametrize("pipeline,num_workers,where,sig", CASES)
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(pipeline, num_workers, where, sig, data,
                                                                    uninterrupted, tmp_path):
    resumed = _kill_and_resume(pipeline, data, tmp_path / "run", num_workers, where, sig)
    _assert_same_weights(resumed, uninterrupted(pipeline, num_workers))


@pytest.mark.parametrize("pipeline,num_workers,limit", [("pointbind", 1, "max_epochs"), ("pointbind", 1, "max_steps"),
                                                         ("sepe", 0, "max_steps")])
def test_run_resumes_from_the_once_per_epoch_checkpoint_the_configs_ship(pipeline, num_workers, limit, data,
                                                                         uninterrupted, tmp_path):
    """ModelCheckpoint as configs/sepe.yaml and configs/pointbind_demo.yaml ship it (a checkpoint at each epoch's
    end, inside ``on_train_epoch_end``): a run SIGKILLed as epoch 1 begins resumes from epoch 0's checkpoint to the
    uninterrupted run's weights, whether ``max_epochs`` or ``max_steps`` ends it (Lightning resumes a ``max_steps``
    run as a restart inside the saved epoch; ``lang3d.training.resume.EpochEndCheckpointResume``). Point-Bind draws
    dropout from the global generator; SEPE seeds its draws per step, so the batches alone decide its weights."""
    run_dir = tmp_path / "run"
    command = _command(pipeline, data, run_dir, num_workers, kill=(STEPS_PER_EPOCH, "SIGKILL"), every_step=False,
                       limit=limit)
    killed = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == STEPS_PER_EPOCH
    _run(_command(pipeline, data, run_dir, num_workers, resume=True, every_step=False, limit=limit))
    _assert_same_weights(_trained(run_dir), uninterrupted(pipeline, num_workers))

"""Every pipeline through the real CLI under Lightning DDP: 2 CPU processes (gloo), tiny synthetic data.

Each run is ``python -m lang3d fit|test ... --trainer.strategy ddp --trainer.devices 2`` in a subprocess (Lightning's
launcher re-executes that command line for rank 1). ``RankReport`` (a callback given on the command line) writes,
on every rank, the epoch metrics after evaluation and, after training, a hash of the module's weights and buffers
and the type of every trainable BatchNorm layer. Checked: both ranks finish with identical weights and running
statistics (synchronised BatchNorm everywhere), both ranks hold the same evaluation metrics, and those equal the
metrics of a one-process run of the saved checkpoint on the same data, to float rounding of sums: evaluation batch
size 1, so every sample's forward is the same whatever the number of processes (batched arithmetic differs by
~1e-7 between batchings, enough to swap the ranks of near-tied embeddings), and evaluation shards are consecutive
blocks, so rows gathered in rank order come in the one-process order (rankings break exact ties by position). One
run is launched as two nodes of one process each, by two ``torchrun`` launchers on this machine (loopback), as the
README's multi-node command does.
"""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import MinkowskiEngine as ME
import pytest
import torch

from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from datamodules.synthetic.s3dis import generate_s3dis
from datamodules.synthetic.scannet_detection import generate_scannet_detection
from lang3d.training.cli import main as cli_main
from lang3d.training.sync_batchnorm import TORCH_BATCHNORMS, SyncBatchNorm
from text4point import Text4PointInstanceSegmentation

pytestmark = pytest.mark.ddp

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]   # and --trainer.strategy (run_ddp)
ONE = ["--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.devices", "1"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class RankReport(L.Callback):
    """Writes ``<out>/<stage>.rank<r>.json`` on every rank: ``validate`` / ``test``: the epoch metrics
    (``trainer.callback_metrics``); ``fit``: sha256 of the state dict after every training step (before anything
    else, e.g. a validation forward, could re-broadcast rank 0's buffers) and {name: type} of trainable norm layers."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.hashes: list[str] = []

    def _write(self, trainer: L.Trainer, stage: str, payload: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{stage}.rank{trainer.global_rank}.json").write_text(json.dumps(payload, indent=1))

    def _metrics(self, trainer: L.Trainer) -> dict:
        return {k: float(v) for k, v in trainer.callback_metrics.items()}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._write(trainer, "validate", self._metrics(trainer))

    def on_test_end(self, trainer, pl_module):
        self._write(trainer, "test", self._metrics(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        digest = hashlib.sha256()
        for key, value in sorted(pl_module.state_dict().items()):
            digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        self.hashes.append(digest.hexdigest())

    def on_train_end(self, trainer, pl_module):
        norms = {name: type(m).__name__ for name, m in pl_module.named_modules()
                 if isinstance(m, (*TORCH_BATCHNORMS, SyncBatchNorm, ME.MinkowskiBatchNorm))
                 and any(p.requires_grad for p in m.parameters())}
        self._write(trainer, "fit", {"sha256": self.hashes, "norms": norms, "world_size": trainer.world_size,
                                     "node_rank": trainer.node_rank})


def callbacks(run: Path, checkpoint: bool = True, writer: str | None = None) -> list[str]:
    """``--trainer.callbacks``: ``RankReport``, ``ModelCheckpoint`` into ``<run>/ckpt`` when ``checkpoint``, and the
    test-output ``writer`` (a class path, e.g. ``text4point.writers.SegmentationPredictionWriter``) when given."""
    items = [{"class_path": "test_ddp_pipelines.RankReport", "init_args": {"out": str(run / "report")}}]
    if writer is not None:
        items.append({"class_path": writer})
    if checkpoint:
        items.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(run / "ckpt"), "save_last": True, "save_top_k": 0}})
    return ["--trainer.callbacks", json.dumps(items)]


def run_ddp(args: list[str], timeout: float = 240, strategy: str = "ddp") -> str:
    """``python -m lang3d <args> <DDP> --trainer.strategy <strategy>`` in a subprocess (its own session, killed
    whole on timeout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lang3d", *args, *DDP, "--trainer.strategy", strategy, *QUIET],
                            cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"DDP run timed out after {timeout} s:\n{proc.communicate()[0][-6000:]}")
    assert proc.returncode == 0, f"DDP run failed ({proc.returncode}):\n{out[-8000:]}"
    return out


def reports(run: Path, stage: str, world: int = 2) -> list[dict]:
    paths = [run / "report" / f"{stage}.rank{r}.json" for r in range(world)]
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"no {stage} report from {missing}"
    return [json.loads(p.read_text()) for p in paths]


def check_training(run: Path, batchnorms: set[str], steps: int = 2) -> None:
    """Both ranks made ``steps`` steps and after each held identical weights and buffers (DDP averages the
    gradients; the running statistics agree only if BatchNorm is synchronised); the trainable BatchNorm layers
    are exactly of the types ``batchnorms``."""
    rank0, rank1 = reports(run, "fit")
    assert rank0["world_size"] == 2 and len(rank0["sha256"]) == len(rank1["sha256"]) == steps
    assert rank0["sha256"] == rank1["sha256"], "the ranks' weights or buffers differ after a DDP training step"
    assert {kind for kind in rank0["norms"].values() if "BatchNorm" in kind} == batchnorms, rank0["norms"]


def check_metrics(ddp_run: Path, single_run: Path, stage: str, prefix: str, rank_zero_only=()) -> dict:
    """The ``prefix`` metrics: identical on both DDP ranks, and equal to those of the one-process run. Metrics
    in ``rank_zero_only`` are logged by rank 0 alone: rank 1 must not hold them."""
    rank0, rank1 = reports(ddp_run, stage)
    (single,) = reports(single_run, stage, world=1)
    assert not set(rank_zero_only) & rank1.keys()
    rank1 = {**rank1, **{k: rank0[k] for k in rank_zero_only if k in rank0}}
    picked = [{k: v for k, v in r.items() if k.startswith(prefix)} for r in (rank0, rank1, single)]
    assert picked[2], f"no {prefix}* metric in {sorted(single)}"
    assert picked[0] == picked[1], "the DDP ranks hold different evaluation metrics"
    assert picked[0].keys() == picked[2].keys()
    for key, value in picked[2].items():
        assert picked[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    return picked[2]


# ---------------------------------------------------------------- data (built once per module)
@pytest.fixture(scope="module")
def tiny_s3dis(tmp_path_factory):
    """3 rooms per area: the 3 test rooms split 2 / 1 over the ranks."""
    root = tmp_path_factory.mktemp("s3dis")
    generate_s3dis(root, areas=(1, 5), rooms_per_area=3, points_per_room=3000, seed=0)
    return root


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    generate_cap3d(root / "cap3d", num_objects=10, views=2, image_size=32, points=512)
    generate_modelnet40(root / "modelnet40", train_per_class=1, test_per_class=2, points=512, formats=("resampled",))
    return root


@pytest.fixture(scope="module")
def scannet_det(tmp_path_factory):
    """7 detection scans of 1500 points: 4 for training (2 steps at batch size 1 per rank), 3 for evaluation."""
    root = tmp_path_factory.mktemp("scannet_det")
    generate_scannet_detection(root, num_scenes=7, points_per_scene=1500, seed=0, val_fraction=3 / 7)
    return root


# ---------------------------------------------------------------- pipelines
def fit_ddp(config: list[str], run: Path, *extra: str, strategy: str = "ddp") -> None:
    """Two training steps under DDP, validation at the end (batch size 1), checkpoint ``<run>/ckpt/last.ckpt``."""
    run_ddp(["fit", *config, "--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0",
             "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir", str(run),
             *callbacks(run), *extra], strategy=strategy)


def evaluate_alone(command: str, config: list[str], run: Path, ckpt: Path, writer: str | None = None) -> None:
    """``validate`` / ``test`` of the checkpoint in this process, one CPU process, no logger."""
    cli_main([command, *config, *ONE, *QUIET, "--trainer.logger", "false", "--trainer.default_root_dir", str(run),
              *callbacks(run, checkpoint=False, writer=writer), "--ckpt_path", str(ckpt)])


def run_test_twice(config: list[str], ddp: Path, single: Path, writer: str | None = None) -> Path:
    """``test`` of ``<ddp>/ckpt/last.ckpt`` under DDP (reports beside the fit's, files under ``<ddp>/test``, which
    is returned) and in this process (reports and files under ``single``); ``writer`` writes the test outputs."""
    ckpt, tested = ddp / "ckpt" / "last.ckpt", ddp / "test"
    run_ddp(["test", *config, "--trainer.default_root_dir", str(tested), "--trainer.logger.init_args.save_dir",
             str(tested), *callbacks(ddp, checkpoint=False, writer=writer), "--ckpt_path", str(ckpt)])
    evaluate_alone("test", config, single, ckpt, writer)
    return tested


def check_same_files(single: Path, tested: Path, pattern: str) -> int:
    """The files matching ``pattern`` (relative to a log directory) that the one-process run wrote: the DDP run
    wrote each of them once (each rank its own scenes) and no other, byte for byte the same. Returns their count."""
    alone = sorted(single.rglob(pattern))
    assert len(list(tested.rglob(pattern))) == len(alone)
    for path in alone:
        (twin,) = tested.rglob(str(path.relative_to(single)))
        assert twin.read_bytes() == path.read_bytes(), f"{twin} differs from the one-process run's"
    return len(alone)


def test_text4point_pretraining(tiny_scannet, tmp_path):
    config = ["-c", "configs/text4point/pretrain_scannet.yaml", "-c", "configs/text4point/demo_synthetic.yaml",
              "--data.root", str(tiny_scannet), "--data.frame_skip", "1", "--data.image_size", "[96, 128]",
              "--data.voxel_size", "0.05", "--data.num_workers", "0", "--data.batch_size", "1",
              "--model.feature_dim", "16", "--model.decoder_width", "16", "--model.num_pairs", "128"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--model.image_log_interval", "1")
    check_training(ddp, {"SparseSyncBatchNorm", "SyncBatchNorm"})   # SR-UNet; TQM and 2D decoder
    (events,) = ddp.rglob("events.out.tfevents.*")   # rank 0 writes the TensorBoard log, rank 1 nothing
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "pairs/matched_voxels" in accumulator.Tags()["images"]
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    metrics = check_metrics(ddp, single, "validate", "val/")
    assert {"val/loss", "val/loss_enc", "val/loss_dec", "val/pairs"} <= metrics.keys()


def test_s3dis_finetuning(tiny_s3dis, tmp_path):
    config = ["-c", "configs/text4point/finetune_s3dis.yaml", "-c", "configs/text4point/demo_synthetic_s3dis.yaml",
              "--data.root", str(tiny_s3dis), "--data.num_workers", "0", "--data.batch_size", "1",
              "--data.val_batch_size", "1"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.check_val_every_n_epoch", "1")
    check_training(ddp, {"SparseSyncBatchNorm", "SyncBatchNorm"})
    tested = run_test_twice(config, ddp, single, "text4point.writers.SegmentationPredictionWriter")
    metrics = check_metrics(ddp, single, "test", "test")
    assert {"test/miou", "test/macc", "test/oa"} <= metrics.keys()
    assert check_same_files(single, tested, "predictions/*/*.labels.npy") == 3   # rank 0: 2 rooms, rank 1: one


def test_text4point_detection(scannet_det, tmp_path):
    config = ["-c", "configs/text4point/detection_scannet.yaml",
              "-c", "configs/text4point/demo_synthetic_scannet_det.yaml", "--data.root", str(scannet_det),
              "--data.num_points", "1500", "--data.voxel_size", "0.2", "--data.num_workers", "0",
              "--data.batch_size", "1", "--data.val_batch_size", "1", "--model.num_seed", "64",
              "--model.num_proposal", "16"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp)
    check_training(ddp, {"SparseSyncBatchNorm", "SyncBatchNorm"})   # SR-UNet, TQM; VoteNet head
    tested = run_test_twice(config, ddp, single, "text4point.writers.DetectionPredictionWriter")
    metrics = check_metrics(ddp, single, "test", "test")
    assert {"test/map@0.25", "test/map@0.5", "test/mean_recall@0.25"} <= metrics.keys()
    assert check_same_files(single, tested, "predictions/*.npy") == 3   # rank 0: 2 scans, rank 1: one


def test_s3dis_instance_segmentation(tiny_s3dis, tmp_path):
    config = ["-c", "configs/text4point/instance_s3dis.yaml", "-c", "configs/text4point/demo_synthetic_s3dis_ins.yaml",
              "--data.root", str(tiny_s3dis), "--data.num_workers", "0", "--data.batch_size", "1",
              "--data.val_batch_size", "1"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    # the strategy of configs/text4point/instance_s3dis.yaml (the demo overlay runs one process)
    fit_ddp(config, ddp, strategy="ddp_find_unused_parameters_true")
    check_training(ddp, {"SparseSyncBatchNorm", "SyncBatchNorm"})   # SR-UNet, TQM; offset head
    # ScoreNet (score_start_step 15) is in no step's graph (DDP finds it unused) and took no SGD step
    ckpt = torch.load(ddp / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    model = Text4PointInstanceSegmentation.load_from_checkpoint(ddp / "ckpt" / "last.ckpt")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    stepped = {trainable[i] for i in ckpt["optimizer_states"][0]["state"]}
    assert stepped == {name for name in trainable if not name.startswith("score_net.")}
    tested = run_test_twice(config, ddp, single, "text4point.writers.InstancePredictionWriter")
    metrics = check_metrics(ddp, single, "test", "test")
    assert {"test/map", "test/map@0.5", "test/mrec@0.5"} <= metrics.keys()
    assert check_same_files(single, tested, "instances/Area_5/*.txt") == 3   # rank 0: 2 rooms, rank 1: one
    assert check_same_files(single, tested, "predicted_masks/*.txt") > 0


def _cap3d(prefix: str, objects: Path) -> list[str]:
    """Cap3D options (under ``prefix``): 4 training objects (2 steps at batch size 1 per rank), 6 validation."""
    return [f"--{prefix}.root", str(objects / "cap3d"), f"--{prefix}.num_workers", "0", f"--{prefix}.num_points",
            "256", f"--{prefix}.split_fractions", "[0.6, 0.4]", f"--{prefix}.batch_size", "1",
            f"--{prefix}.val_batch_size", "1"]


def test_pointbind(objects, tmp_path):
    alignment, zeroshot = "--data.init_args.alignment.init_args", "--data.init_args.zeroshot.init_args"
    config = ["-c", "configs/pointbind.yaml", "-c", "configs/pointbind_demo.yaml", *_cap3d(alignment[2:], objects),
              f"{alignment}.image_size", "[32, 32]", f"{zeroshot}.root", str(objects / "modelnet40"),
              f"{zeroshot}.num_workers", "0", f"{zeroshot}.num_points", "256", f"{zeroshot}.batch_size", "1",
              "--model.init_args.embedding_cache", str(tmp_path / "cache"), "--model.init_args.log_embeddings", "20"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1")
    check_training(ddp, {"SyncBatchNorm"})   # Point-BERT's tokenizer
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["clip_embeddings.rank0.h5",
                                                                      "clip_embeddings.rank1.h5"]
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    metrics = check_metrics(ddp, single, "validate", "val")
    assert {"val/zeroshot_top1", "val/zeroshot_class_mean", "val_retrieval_pairs/3d_to_text/R@1",
            "val_retrieval_classes/3d_to_3d/mAP"} <= metrics.keys()


def test_sepe(objects, tmp_path):
    config = ["-c", "configs/sepe.yaml", *_cap3d("data", objects), "--model.val_sample_steps", "2",
              "--model.val_num_samples", "1"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    fit_ddp(config, ddp, "--trainer.max_epochs", "1")
    check_training(ddp, set())   # no BatchNorm in Point-E or the fusion
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    samples = ("val/sample_chamfer", "val/sample_emd")   # rank 0 draws and logs the validation samples
    metrics = check_metrics(ddp, single, "validate", "val/", rank_zero_only=samples)
    assert {"val/loss", "val/diffusion", "val/chamfer", *samples} <= metrics.keys()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sepe_on_two_nodes_with_torchrun(tmp_path):
    """The README's multi-node command, run as two nodes of one process each: two ``torchrun`` launchers on this
    machine meet at a c10d rendezvous on 127.0.0.1 and train configs/sepe.yaml (2 epochs of 1 step: 14 training
    objects, 7 a rank, batch 4) on the built-in data's format, whose validation split holds one object for the two
    ranks. Both launchers end cleanly, one rank on each node; the ranks hold identical weights after each step and
    the same validation metrics, those of one process validating the checkpoint."""
    data = tmp_path / "cap3d"
    generate_cap3d(data, num_objects=16, views=4, image_size=64)   # what write_builtin_data writes
    config = ["-c", "configs/sepe.yaml", "--data.root", str(data), "--model.val_sample_steps", "2"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                  f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "lang3d", "fit", *config,
               "--trainer.strategy", "ddp", "--trainer.devices", "1", "--trainer.num_nodes", "2",
               "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(ddp),
               "--trainer.logger.init_args.save_dir", str(ddp), *callbacks(ddp), *QUIET]
    nodes = [subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True) for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for node in nodes:
            os.killpg(node.pid, signal.SIGKILL)
        pytest.fail("the two-node run timed out after 300 s:\n" + "\n".join(n.communicate()[0][-4000:] for n in nodes))
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, f"a launcher failed ({node.returncode}):\n{out[-8000:]}"
    check_training(ddp, set())
    assert sorted(report["node_rank"] for report in reports(ddp, "fit")) == [0, 1]
    evaluate_alone("validate", config, single, ddp / "ckpt" / "last.ckpt")
    samples = ("val/sample_chamfer", "val/sample_emd")
    metrics = check_metrics(ddp, single, "validate", "val/", rank_zero_only=samples)
    assert {"val/loss", "val/diffusion", *samples} <= metrics.keys()

"""Every real-data config in configs/ through the CLI at its shipped sizes: one training step and one validation
step on synthetic data that ``datamodules/synthetic`` writes at real-data extents -- ScanNet rooms of 8-10 m seen
by 640×480 depth frames (pre-training) or sampled at 40,000 points (detection) in 2.5 cm voxels, S3DIS rooms up to
a 40 m hallway in 5 cm voxels, SUN RGB-D scenes at 20,000 points, Cap3D and ModelNet40 objects at 8,192 points
with 224×224 views. Only what needs downloaded weights is shrunk: the tiny random CLIPs (``lang3d-tiny-RN`` /
``lang3d-tiny-ViT``) and, for Point-Bind, a narrow Point-BERT. ``ShippedSizes`` records what reached the model
(samples per batch, voxels, metres spanned), so a test fails if an override or a default silently shrank it.

At the shipped batch sizes (32 ScanNet frames or scenes, 64 SUN RGB-D scenes or Point-Bind objects, 6 S3DIS rooms)
a step takes minutes on a CPU: those runs are marked ``slow`` (``make test-full``). The default suite runs every
config at its shipped voxel size, point count and scene extent with the largest batch that keeps it quick.
"""
import json
from pathlib import Path

import lightning as L
import pytest
import yaml
from tiny_network import tiny_rn_network

from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from datamodules.synthetic.s3dis import generate_s3dis
from datamodules.synthetic.scannet import generate_scannet
from datamodules.synthetic.scannet_detection import generate_scannet_detection
from datamodules.synthetic.sunrgbd import generate_sunrgbd
from lang3d.training.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TEXT4POINT = REPO / "configs" / "text4point"
TINY_RN = ["--model.clip_model", "lang3d-tiny-RN", "--model.clip_pretrained", "null", "--data.num_workers", "0"]


TINY_RN_NETWORK = [*tiny_rn_network(), "--data.num_workers", "0"]
# The synthetic data sets hold exactly one training and one validation batch (one epoch = one step).
ONE_STEP = ["--trainer.max_steps", "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.log_every_n_steps", "1",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
            # one process without a DDP wrapper (instance_s3dis.yaml ships a DDP strategy for several devices, which
            # on one device would leave a process group's port open in the test process for later DDP runs)
            "--trainer.strategy", "auto"]


class ShippedSizes(L.Callback):
    """Writes ``<out>`` (JSON): per training / validation batch the samples, the points or voxels, and the largest
    extent in metres of one sample (voxel pipelines: voxel coordinates × the datamodule's voxel size)."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.seen: dict = {"train": [], "val": [], "test": []}

    @staticmethod
    def _sizes(trainer, batch) -> dict:
        if "coord" in batch:   # sparse voxels [ΣV, 4] (batch index, x, y, z)
            coord = batch["coord"]
            voxel = float(trainer.datamodule.hparams.voxel_size)
            owners = coord[:, 0].unique()
            extent = max(float((coord[coord[:, 0] == b, 1:].amax(0) - coord[coord[:, 0] == b, 1:].amin(0)).max())
                         for b in owners.tolist()) * voxel
            return {"samples": len(owners), "voxels": len(coord), "voxel_size": voxel, "extent_m": extent}
        points = batch["points"]   # [B, N, 3]
        return {"samples": len(points), "points": points.shape[1]}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"].append(self._sizes(trainer, batch))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.seen["val"].append(self._sizes(trainer, batch))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append(self._sizes(trainer, batch))

    def _write(self):
        self.out.write_text(json.dumps(self.seen))

    def on_fit_end(self, trainer, pl_module):
        self._write()

    def on_test_end(self, trainer, pl_module):
        self._write()


def shipped(config: Path, key: str):
    """A value of the shipped config by dotted key, e.g. ``data.init_args.batch_size``."""
    value = yaml.safe_load(config.read_text())
    for part in key.split("."):
        value = value[part]
    return value


def run_cli(command: str, configs: list[Path], tmp_path: Path, *overrides: str) -> tuple[dict, set[str]]:
    """``lang3d <command>`` with the config's own callbacks and logger (writing under ``tmp_path``) plus
    ``ShippedSizes``; returns what the callback saw and the TensorBoard scalar tags."""
    run, report = tmp_path / "run", tmp_path / "sizes.json"
    callback = {"class_path": "test_shipped_configs.ShippedSizes", "init_args": {"out": str(report)}}
    args = [command]
    for config in configs:
        args += ["-c", str(config)]
    cli_main([*args, *overrides, "--trainer.default_root_dir", str(run), "--trainer.logger.init_args.save_dir",
              str(run), "--trainer.callbacks+", json.dumps(callback)])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return json.loads(report.read_text()), tags


def fit_one_step(config: Path, tmp_path: Path, *overrides: str, val_batches: int = 1) -> tuple[dict, set[str]]:
    """One training step then ``val_batches`` validation batches (one per validation loader); all happened and
    were logged."""
    seen, tags = run_cli("fit", [config], tmp_path, *ONE_STEP, *overrides)
    assert len(seen["train"]) == 1 and len(seen["val"]) == val_batches, seen
    assert any(t.startswith("train/loss") for t in tags) and any(t.startswith("val/") for t in tags), tags
    assert "final/train/loss" in tags and "hp_metric" not in tags, tags   # the HParams summary (HParamsSummary)
    return seen, tags


# ---------------------------------------------------------------- S3DIS: rooms up to a 40 m hallway, 5 cm voxels
HALLWAY, ROOMS = (40.0, 2.5), [(40.0, 2.5), (9.0, 7.0), (6.0, 5.0)]   # floor sizes in metres


def s3dis(root: Path, sizes: list) -> Path:
    """Areas 1 and 5 with rooms of ``sizes``; 200,000 points per room: ~400 per m² of the hallway's ~480 m² of
    surfaces, so its 5 cm voxels are nearly all filled, as in the real scans."""
    generate_s3dis(root, areas=(1, 5), rooms_per_area=len(sizes), points_per_room=200_000, seed=0,
                   malformed_line=False, room_sizes=sizes)
    return root


@pytest.fixture(scope="module")
def s3dis_hallway(tmp_path_factory):
    return s3dis(tmp_path_factory.mktemp("s3dis_hallway"), [HALLWAY])


@pytest.fixture(scope="module")
def s3dis_rooms(tmp_path_factory):
    return s3dis(tmp_path_factory.mktemp("s3dis_rooms"), ROOMS)


@pytest.mark.parametrize("config", ["finetune_s3dis.yaml", "instance_s3dis.yaml"])
def test_s3dis_configs_at_shipped_voxel_size_on_a_40_m_hallway(config, s3dis_hallway, tmp_path):
    """A batch of one room, the 40 m hallway, in training and in validation."""
    seen, _ = fit_one_step(TEXT4POINT / config, tmp_path, *TINY_RN_NETWORK, "--data.root", str(s3dis_hallway),
                           "--data.areas", "[1, 5]", "--data.batch_size", "1")
    (train,), (val,) = seen["train"], seen["val"]
    assert train["samples"] == val["samples"] == 1 and train["voxel_size"] == val["voxel_size"] == 0.05
    assert train["extent_m"] > 25.0 and val["extent_m"] > 39.0, seen   # training rooms are turned and scaled
    assert val["voxels"] > 100_000, seen


@pytest.mark.slow
@pytest.mark.parametrize("config", ["finetune_s3dis.yaml", "instance_s3dis.yaml"])
def test_s3dis_configs_at_shipped_batch_size(config, s3dis_rooms, tmp_path):
    """The shipped batch of 6 rooms: the three rooms of Area 1 (hallway included), each twice (``train_loop``)."""
    batch = shipped(TEXT4POINT / config, "data.init_args.batch_size")
    assert batch == 6
    seen, _ = fit_one_step(TEXT4POINT / config, tmp_path, *TINY_RN_NETWORK, "--data.root", str(s3dis_rooms),
                           "--data.areas", "[1, 5]", "--data.train_loop", "2", "--data.max_val_rooms", "1")
    (train,), (_,) = seen["train"], seen["val"]   # one validation batch
    assert train["samples"] == batch and train["voxel_size"] == 0.05 and train["extent_m"] > 25.0, seen


# ---------------------------------------------------------------- ScanNet pre-training: 8-10 m rooms, 2.5 cm voxels
# At the shipped batches of 32 ScanNet frames / scenes and 64 SUN RGB-D scenes the published SR-UNet34's activations
# outgrow a 24 GB CPU machine (pre-training and ScanNet detection were killed at 21.7 GB): those slow tests narrow it
# to a quarter of its channels (same layers, strides and voxels; pre-training at batch 32 then peaks at ~8 GB).
NARROW = 0.25
NARROW_SR_UNET = ["--model.width", str(NARROW)]   # pre-training's own network
TINY_RN_NARROW_NETWORK = [*tiny_rn_network(width=NARROW), "--data.num_workers", "0"]


def scannet_frames(root: Path, frames: int) -> Path:
    """One training and one validation scan of ``frames`` frames each (depth 640×480 as ScanNet's sensor, colour
    resized by the datamodule to the shipped 240×320) in rooms of 8-10 m."""
    generate_scannet(root, num_scenes=2, frames_per_scene=frames, color_size=(640, 480), depth_size=(640, 480),
                     seed=0, write_sens=False, room_size=(8.0, 10.0))
    return root


def pretrain(tmp_path: Path, frames: int, batch_size: int, *overrides: str) -> dict:
    """``frame_skip 1`` so that ``frames`` rendered frames make one batch (real runs take every 25th frame of
    thousands)."""
    config = TEXT4POINT / "pretrain_scannet.yaml"
    root = scannet_frames(tmp_path / "scannet", frames)
    seen, tags = fit_one_step(config, tmp_path, *TINY_RN, "--data.root", str(root), "--data.frame_skip", "1",
                              "--data.batch_size", str(batch_size), *overrides)
    assert {"train/loss_enc", "train/match_acc_enc", "val/loss_enc"} <= tags
    (train,), (val,) = seen["train"], seen["val"]
    assert train["samples"] == val["samples"] == batch_size and train["voxel_size"] == 0.025
    assert max(train["extent_m"], val["extent_m"]) > 5.0 and train["voxels"] > 20_000 * batch_size, seen
    return seen


def test_pretrain_config_at_shipped_voxel_size_image_size_and_room_extent(tmp_path):
    pretrain(tmp_path, frames=2, batch_size=2)


@pytest.mark.slow
def test_pretrain_config_at_shipped_batch_size(tmp_path):
    batch = shipped(TEXT4POINT / "pretrain_scannet.yaml", "data.init_args.batch_size")
    assert batch == 32
    pretrain(tmp_path, batch, batch, *NARROW_SR_UNET)   # frames, batch size


# ---------------------------------------------------------------- detection: ScanNet 40,000 points, SUN RGB-D 20,000
def detection(config: Path, tmp_path: Path, root: Path, batch_size: int, points: int,
              network: list[str] = TINY_RN_NETWORK) -> dict:
    seen, tags = fit_one_step(config, tmp_path, *network, "--data.root", str(root), "--data.batch_size",
                              str(batch_size))
    assert {"train/vote", "train/loss_aux", "val/map@0.25"} <= tags
    (train,), (val,) = seen["train"], seen["val"]
    assert train["samples"] == batch_size and train["voxel_size"] == val["voxel_size"] == 0.025
    assert shipped(config, "data.init_args.num_points") == points
    return seen


def scannet_detection(root: Path, train_scenes: int) -> Path:
    """``train_scenes`` training scans and one validation scan of rooms of 8-10 m, 50,000 points each (the
    datamodule samples the shipped 40,000)."""
    generate_scannet_detection(root, num_scenes=train_scenes + 1, points_per_scene=50_000, seed=0,
                               val_fraction=1 / (train_scenes + 1), room_size=(8.0, 10.0))
    return root


def test_scannet_detection_config_at_shipped_points_voxel_size_and_room_extent(tmp_path):
    seen = detection(TEXT4POINT / "detection_scannet.yaml", tmp_path, scannet_detection(tmp_path / "det", 2), 2,
                     40_000)
    assert seen["train"][0]["extent_m"] > 7.5 and seen["val"][0]["extent_m"] > 7.5, seen


@pytest.mark.slow
def test_scannet_detection_config_at_shipped_batch_size(tmp_path):
    config = TEXT4POINT / "detection_scannet.yaml"
    batch = shipped(config, "data.init_args.batch_size")
    assert batch == 32
    detection(config, tmp_path, scannet_detection(tmp_path / "det", batch), batch, 40_000, TINY_RN_NARROW_NETWORK)


def sunrgbd(root: Path, train_scenes: int) -> Path:
    """50,000 points per sample as votenet's ``*_pc_bbox_votes_50k`` files (the datamodule samples 20,000)."""
    generate_sunrgbd(root, num_train=train_scenes, num_val=1, points_per_scene=50_000, seed=0)
    return root


def test_sunrgbd_detection_config_at_shipped_points_and_voxel_size(tmp_path):
    detection(TEXT4POINT / "detection_sunrgbd.yaml", tmp_path, sunrgbd(tmp_path / "sunrgbd", 4), 4, 20_000)


@pytest.mark.slow
def test_sunrgbd_detection_config_at_shipped_batch_size(tmp_path):
    config = TEXT4POINT / "detection_sunrgbd.yaml"
    batch = shipped(config, "data.init_args.batch_size")
    assert batch == 64
    detection(config, tmp_path, sunrgbd(tmp_path / "sunrgbd", batch), batch, 20_000, TINY_RN_NARROW_NETWORK)


# ---------------------------------------------------------------- Point-Bind: 8,192 points, 224×224 views, batch 64
POINTBIND = REPO / "configs" / "pointbind.yaml"
# the shipped I2P-MAE's groups and neighbourhoods (what the point count meets), at small widths and depths
TINY_I2PMAE = {"dims": [16, 32, 64], "depths": [1, 1, 1], "heads": 2, "tokenizer_hidden": [16, 32, 32]}
TINY_VIT = ["--model.clip_model", "lang3d-tiny-ViT", "--model.clip_pretrained", "null",
            "--model.encoder_options", json.dumps(TINY_I2PMAE)]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """72 Cap3D objects (16,384 points, as Cap3D's clouds; 224×224 views): with the shipped 0.9 / 0.1 split, one
    training batch of 64 and one validation batch; 13 ModelNet40 test shapes of 10,000 points."""
    root = tmp_path_factory.mktemp("objects")
    generate_cap3d(root / "cap3d", num_objects=72, views=1, image_size=224, points=16384, seed=0)
    generate_modelnet40(root / "modelnet40", train_per_class=1, test_per_class=1, points=10000,
                        formats=("resampled",))
    return root


def test_pointbind_config_at_shipped_sizes(objects, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the config checkpoints to runs/pointbind/checkpoints and caches under runs/
    alignment, zeroshot = "--data.init_args.alignment.init_args.", "--data.init_args.zeroshot.init_args."
    assert shipped(POINTBIND, "data.init_args.alignment.init_args.batch_size") == 64
    seen, tags = fit_one_step(POINTBIND, tmp_path, *TINY_VIT, "--model.encoder_init", "null",  # weights of full widths
                              f"{alignment}root", str(objects / "cap3d"),
                              f"{alignment}num_workers", "0", f"{zeroshot}root", str(objects / "modelnet40"),
                              f"{zeroshot}num_workers", "0", val_batches=2)
    assert (tmp_path / "runs" / "pointbind" / "checkpoints" / "last.ckpt").is_file()
    assert seen["train"] == [{"samples": 64, "points": 8192}], seen
    assert [v["points"] for v in seen["val"]] == [8192, 8192]   # Cap3D retrieval, ModelNet40 zero-shot
    assert {"train/loss", "val/zeroshot_top1"} <= tags


def test_pointbind_zeroshot_config_at_shipped_sizes(objects, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # CLIP embeddings cached under runs/
    config = REPO / "configs" / "pointbind_zeroshot.yaml"
    assert shipped(config, "data.init_args.batch_size") == 64
    seen, tags = run_cli("test", [config], tmp_path, *TINY_VIT, "--data.root", str(objects / "modelnet40"),
                         "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
                         "false")
    assert seen["test"] == [{"samples": 13, "points": 8192}], seen
    assert {"test/zeroshot_top1", "final/test/zeroshot_top1"} <= tags and "hp_metric" not in tags


# ---------------------------------------------------------------- SEPE: shipped as a CPU run on synthetic data
def test_sepe_config_as_shipped(tmp_path, monkeypatch):
    """configs/sepe.yaml runs as shipped (tiny models, built-in data format); only the data folder moves."""
    monkeypatch.chdir(tmp_path)   # the config checkpoints to runs/sepe/checkpoints
    config = REPO / "configs" / "sepe.yaml"
    root = tmp_path / "cap3d"
    generate_cap3d(root, num_objects=20, views=2, image_size=64, points=1024, seed=0)   # 90 / 5 / 5 %: 18 / 1 / 1
    seen, tags = fit_one_step(config, tmp_path, "--data.root", str(root), "--data.num_workers", "0",
                              "--data.max_train_objects", str(shipped(config, "data.init_args.batch_size")))
    batch = shipped(config, "data.init_args.batch_size")
    assert seen["train"] == [{"samples": batch, "points": shipped(config, "data.init_args.num_points")}], seen

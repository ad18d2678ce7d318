"""Text4Point instance segmentation (PointGroup head): offset losses and ScoreNet against naive loops, the soft score
targets, instance ids through the S3DIS datamodule, fitting a synthetic room (scored on its copy), files written by
`test`, TensorBoard, and the configs through the CLI as `make finetune-s3dis-ins` runs them."""
import shutil
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from tiny_network import tiny_rn_network

from datamodules import S3DISDataModule
from datamodules.s3dis.raw import ALIGNED_DIR
from datamodules.s3dis.rooms import load_room, room_path
from datamodules.scannet.meta import CLASS_LABELS
from datamodules.synthetic.s3dis import generate_s3dis
from lang3d.training.cli import Lang3DCLI, LinkedArgumentError, build_cli
from lang3d.training.cli import main as cli_main
from text4point import Text4PointInstanceSegmentation, Text4PointPretraining
from text4point.guided_net import LanguageGuidedNet
from text4point.instance_clustering import best_iou, cluster_points
from text4point.instance_heads import ScoreNet, batch_instance_ids, offset_losses, score_targets
from text4point.writers import InstancePredictionWriter

CLASSES = list(S3DISDataModule.class_names)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "text4point"
TINY = dict(network=partial(LanguageGuidedNet, clip_model="lang3d-tiny-RN", clip_pretrained=None, bn_momentum=0.3),
            lr=0.1, aux_loss_weight=0.5, cluster_radius=0.3, cluster_min_voxels=5, test_score_threshold=0.0)
TINY_CLI = tiny_rn_network()


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """Two synthetic rooms (6000 points) in Area_1, copied as Area_5: the held-out rooms are the training rooms,
    so a short run can show what the pipeline fits (not how it generalises)."""
    root = tmp_path_factory.mktemp("s3dis_ins")
    generate_s3dis(root, areas=(1,), rooms_per_area=2, points_per_room=6000, seed=0, malformed_line=False)
    shutil.copytree(root / ALIGNED_DIR / "Area_1", root / ALIGNED_DIR / "Area_5")
    return root


def datamodule(root, **kw):
    dm = S3DISDataModule(str(root), **{"areas": (1, 5), "test_area": 5, "batch_size": 1, "num_workers": 0,
                                       "with_instance": True, **kw})
    dm.prepare_data()
    return dm


def test_offset_losses_match_a_naive_loop():
    rng = np.random.default_rng(0)
    coord, offset = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    instance = rng.integers(-1, 5, size=40)
    instance[7] = 9  # a one-point instance: zero target, zero direction term
    pred = torch.tensor(offset, requires_grad=True)
    l1, direction = offset_losses(pred, torch.tensor(coord), torch.tensor(instance))
    total_l1, total_dir, count = 0.0, 0.0, 0
    for i in range(40):
        if instance[i] < 0:
            continue
        target = coord[instance == instance[i]].mean(0) - coord[i]
        total_l1 += np.abs(offset[i] - target).sum()
        total_dir -= (offset[i] / (np.linalg.norm(offset[i]) + 1e-8)) @ (target / (np.linalg.norm(target) + 1e-8))
        count += 1
    assert float(l1) == pytest.approx(total_l1 / count, rel=1e-10)
    assert float(direction) == pytest.approx(total_dir / count, rel=1e-10)
    (l1 + direction).backward()
    assert pred.grad[instance < 0].abs().sum() == 0 and pred.grad[instance >= 0].abs().sum() > 0
    none = offset_losses(pred, torch.tensor(coord), torch.full((40,), -1))
    assert [float(v) for v in none] == [0.0, 0.0] and none[0].requires_grad
    with pytest.raises(ValueError, match="offset_losses"):
        offset_losses(pred[:, :2], torch.tensor(coord), torch.tensor(instance))


def test_score_targets_ramp_between_the_iou_bounds():
    iou = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 0.8, 1.0])
    expected = [0.0 if v < 0.25 else 1.0 if v > 0.75 else (v - 0.25) / 0.5 for v in iou.tolist()]
    torch.testing.assert_close(score_targets(iou), torch.tensor(expected))
    torch.testing.assert_close(score_targets(iou, 0.5, 0.6), ((iou - 0.5) / 0.1).clamp(0, 1))
    with pytest.raises(ValueError, match="low < high"):
        score_targets(iou, 0.7, 0.3)


def test_scorenet_pools_each_cluster_like_a_loop():
    torch.manual_seed(0)
    net = ScoreNet(5, hidden=8)
    features, coord = torch.randn(20, 5), torch.randn(20, 3)
    members = [torch.tensor([3, 4, 5]), torch.tensor([0, 19, 7, 3]), torch.tensor([11])]
    point_index = torch.cat(members)
    cluster_index = torch.cat([torch.full((len(m),), i) for i, m in enumerate(members)])
    got = net(features, coord, point_index, cluster_index, 3)
    for i, m in enumerate(members):
        h = net.point_mlp(torch.cat([features[m], coord[m] - coord[m].mean(0)], 1))
        torch.testing.assert_close(got[i], net.out(h.max(0).values)[0])
    shuffled = torch.randperm(len(point_index))  # member order does not matter
    torch.testing.assert_close(net(features, coord, point_index[shuffled], cluster_index[shuffled], 3), got)
    with pytest.raises(ValueError, match="at least one point"):
        net(features, coord, point_index, cluster_index, 4)


def test_datamodule_carries_instance_ids_per_room(rooms):
    dm = datamodule(rooms, val_batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    owner = batch["inverse"][:, 0].numpy()
    assert batch["instance"].shape == batch["segment"].shape and batch["point_instance"].shape == owner.shape
    for b, name in enumerate(batch["names"]):
        raw = load_room(room_path(dm.cache_root, name))["instance"]
        np.testing.assert_array_equal(batch["point_instance"].numpy()[owner == b], raw)  # the room's own ids
    two = datamodule(rooms, batch_size=2)
    two.setup("fit")
    train = next(iter(two.train_dataloader()))
    assert train["instance"].shape == train["segment"].shape
    # the rooms of a batch share raw ids (0, 1, ...); the module's batch-wide ids: one per (room, id) pair
    pairs = list(zip(train["coord"][:, 0].tolist(), train["instance"].tolist()))
    assert {i for r, i in pairs if r == 0} & {i for r, i in pairs if r == 1}
    keys_of: dict = {}
    for pair, key in zip(pairs, batch_instance_ids(train["coord"][:, 0], train["instance"]).tolist()):
        keys_of.setdefault(pair, set()).add(key)
    assert all(len(k) == 1 for k in keys_of.values()) and len(set.union(*keys_of.values())) == len(keys_of)
    assert batch_instance_ids(torch.tensor([0, 1, 1]), torch.tensor([-1, -1, 3])).tolist() == [-1, -1, 7]
    plain = S3DISDataModule(str(rooms), areas=(1, 5), num_workers=0, val_batch_size=2)
    plain.setup("fit")
    assert not {"instance", "point_instance"} & set(next(iter(plain.val_dataloader())))


@pytest.mark.learning
def test_instance_segmentation_fits_a_room_and_test_writes_scannet_style_files(rooms, tmp_path, learning_seed):
    """40 steps on one room (evaluated on its copy): mAP@0.5 well above zero, and the four walls, which touch at
    the corners and so form ONE cluster on the original coordinates, come out as separate instances: that takes
    the learned offsets (shifted coordinates)."""
    L.seed_everything(learning_seed)
    dm = datamodule(rooms, augment=False, max_train_rooms=1, max_val_rooms=1)
    model = Text4PointInstanceSegmentation(CLASSES, **TINY, score_start_step=20)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=40, check_val_every_n_epoch=40, logger=logger,
                        callbacks=[InstancePredictionWriter()], log_every_n_steps=5, enable_progress_bar=False,
                        enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert scores["val/map@0.5"] > 0.3, scores
    assert scores["val_ap50/wall"] >= 0.5, scores
    batch = next(iter(dm.val_dataloader()))
    walls = batch["segment"].numpy() == CLASSES.index("wall")
    centres = (batch["coord"][:, 1:].numpy() + 0.5) * 0.05
    merged = cluster_points(centres[walls], np.zeros(int(walls.sum()), int), 0.3)
    assert best_iou(merged, batch["instance"].numpy()[walls]).max() < 0.5  # ground-truth walls, original coords

    trainer.test(model, dm)
    model.eval()
    with torch.no_grad():
        (room,) = model.predict_instances(batch)
    inverse = batch["inverse"][:, 1].numpy()
    for mask in room.masks:  # voxel masks read through the inverse index: constant inside each voxel
        by_voxel = np.zeros(len(batch["coord"]), bool)
        by_voxel[inverse[mask]] = True
        np.testing.assert_array_equal(mask, by_voxel[inverse])
    listing = (Path(trainer.log_dir) / "instances" / f"{room.name}.txt").read_text().splitlines()
    assert len(listing) == len(room.masks) > 0
    for line, mask, label, score in zip(listing, room.masks, room.labels, room.scores):
        file, written_label, written_score = line.split()
        written = np.loadtxt(Path(trainer.log_dir) / "instances" / "Area_5" / file, dtype=np.int64)
        np.testing.assert_array_equal(written, mask.astype(np.int64))
        assert int(written_label) == label and float(written_score) == pytest.approx(score, abs=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    assert {"val/map", "val/map@0.5", "val/mprec@0.5", "val/mrec@0.5", "val_ap50/wall", "test/map@0.5",
            "train/loss_offset_l1", "train/loss_offset_dir", "train/loss_score", "train/loss_aux"} <= set(
        events.Tags()["scalars"])
    tensors = events.Tags()["tensors"]
    assert any(t.startswith("val_room/instances_predicted") for t in tensors)
    assert any(t.startswith("val_room/instances_ground_truth") for t in tensors)


def test_bad_settings_are_named(rooms):
    with pytest.raises(ValueError, match=r"skip_classes \['carpet'\]"):
        Text4PointInstanceSegmentation(CLASSES, **TINY, skip_classes=["wall", "carpet"])
    with pytest.raises(ValueError, match="voxel_size must be the data's voxel edge in metres, got None"):
        Text4PointInstanceSegmentation(CLASSES, **TINY, voxel_size=None)   # linked from data without voxels
    model = Text4PointInstanceSegmentation(CLASSES, **TINY)
    plain = S3DISDataModule(str(rooms), areas=(1, 5), num_workers=0)
    plain.setup("fit")
    with pytest.raises(KeyError, match="with_instance=True"):
        model.training_step(next(iter(plain.train_dataloader())), 0)


def test_scorenet_is_in_no_graph_before_score_start_step(rooms):
    """Before ``score_start_step`` the loss is exactly semantic + offset + auxiliary terms and ScoreNet receives no
    gradient at all (not a zero one from a dummy term): DDP finds it unused, which the instance config allows
    (``trainer.strategy: ddp_find_unused_parameters_true``); from ``score_start_step`` on it is trained."""
    dm = datamodule(rooms, augment=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    L.seed_everything(0)
    model = Text4PointInstanceSegmentation(CLASSES, **TINY, score_start_step=10)
    losses = model._losses(batch)
    expected = (losses["loss_semantic"] + 1.0 * (losses["loss_offset_l1"] + losses["loss_offset_dir"])
                + 0.5 * losses["loss_aux"])
    assert "loss_score" not in losses and torch.equal(losses["loss"], expected)
    losses["loss"].backward()
    assert all(p.grad is None for p in model.score_net.parameters())
    assert all(p.grad is not None for p in model.heads.parameters())
    config = yaml.safe_load((CONFIGS / "instance_s3dis.yaml").read_text())
    assert config["trainer"]["strategy"] == "ddp_find_unused_parameters_true"
    assert config["model"]["init_args"]["score_start_step"] > 0

    model.zero_grad()
    model.hparams.score_start_step = 0   # the same batch once ScoreNet is trained (clusters of wide radius exist)
    losses = model._losses(batch)
    losses["loss"].backward()
    assert "loss_score" in losses and all(p.grad is not None for p in model.score_net.parameters())


def test_voxel_size_and_classes_come_from_the_data(rooms):
    """instance_s3dis.yaml leaves voxel_size and class_names out: the CLI takes them from the datamodule; giving
    model.voxel_size is an error naming it."""
    def build(*overrides: str) -> Lang3DCLI:
        return build_cli(["-c", str(CONFIGS / "instance_s3dis.yaml"), "-c",
                          str(CONFIGS / "demo_synthetic_s3dis_ins.yaml"), "--data.root", str(rooms), *TINY_CLI,
                          "--trainer.logger", "false", *overrides], run=False)

    cli = build("--data.voxel_size", "0.1")
    assert cli.model.hparams.voxel_size == 0.1 and cli.model.class_names == list(S3DISDataModule.class_names)
    with pytest.raises(LinkedArgumentError, match=r"model\.voxel_size \(it is S3DISDataModule's voxel_size\)"):
        build("--model.voxel_size", "0.1")


def test_configs_fit_then_test_as_make_runs_them(rooms, tmp_path, monkeypatch):
    """fit from a (tiny, untrained) pre-training checkpoint, then test the last checkpoint, as the make target."""
    pretrain = tmp_path / "pretrain.ckpt"
    pretrained = Text4PointPretraining(class_names=list(CLASS_LABELS), clip_model="lang3d-tiny-RN",
                                       clip_pretrained=None, feature_dim=16, decoder_width=16)
    torch.save({"state_dict": pretrained.state_dict()}, pretrain)
    monkeypatch.chdir(tmp_path)  # the demo overlay writes under runs/ of the working directory
    configs = ["-c", str(CONFIGS / "instance_s3dis.yaml"), "-c", str(CONFIGS / "demo_synthetic_s3dis_ins.yaml"),
               "--data.root", str(rooms), "--data.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    cli_main(["fit", *configs, "--model.pretrained", str(pretrain), "--trainer.max_steps", "3",
              "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1",
              "--model.score_start_step", "1"])
    checkpoint = tmp_path / "runs/text4point_s3dis_ins_demo/checkpoints/last.ckpt"
    assert checkpoint.exists()
    cli_main(["test", *configs, "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1"])
    assert list((tmp_path / "runs/text4point_s3dis_ins_demo").rglob("instances/Area_5/*.txt"))

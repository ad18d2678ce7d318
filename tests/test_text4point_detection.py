"""Text4Point detection fine-tuning end to end on tiny synthetic scenes: VoteNet on the SR-UNet34 fits the
ScanNet-style axis-aligned boxes of its two training scenes (validation = those scenes: a fitting check, not a
generalisation claim), SUN RGB-D-style
oriented boxes run through the CLI with 12 heading bins, predictions written by `test`, TensorBoard."""
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from tiny_network import tiny_rn_network

from datamodules import ScanNetDetectionDataModule, SUNRGBDDataModule
from datamodules.detection_common import collate_detection
from datamodules.scannet.meta import CLASS_LABELS
from datamodules.synthetic.scannet_detection import generate_scannet_detection
from datamodules.synthetic.sunrgbd import generate_sunrgbd
from lang3d.training.cli import Lang3DCLI, LinkedArgumentError, build_cli
from lang3d.training.cli import main as cli_main
from lang3d.visual.tensorboard import bev_boxes_image
from text4point import Text4PointDetection, Text4PointPretraining
from text4point.detection import PREDICTION_DTYPE
from text4point.guided_net import LanguageGuidedNet
from text4point.writers import DetectionPredictionWriter

TINY = dict(clip_model="lang3d-tiny-RN", clip_pretrained=None)
TINY_NETWORK = partial(LanguageGuidedNet, **TINY)
TINY_CLI = tiny_rn_network()
POINTS, VOXEL = 1500, 0.2   # ~850 voxels per scene: a few hundred milliseconds per step on one CPU core


@pytest.fixture(scope="module")
def scannet_root(tmp_path_factory):
    """Two synthetic scans (3 objects each), both used for training and validation."""
    root = tmp_path_factory.mktemp("scannet_det")
    splits = generate_scannet_detection(root, num_scenes=2, points_per_scene=POINTS, seed=0, val_fraction=0.5)
    scans = "".join(f"{name}\n" for name in splits["train"] + splits["val"])
    for split in ("train", "val"):
        (root / "meta_data" / f"scannetv2_{split}.txt").write_text(scans)
    return root


def scannet_datamodule(root):
    return ScanNetDetectionDataModule(str(root), num_points=POINTS, voxel_size=VOXEL, batch_size=2, val_batch_size=2,
                                      num_workers=0, augment=False)


@pytest.mark.learning
def test_votenet_fits_its_training_scenes_and_test_writes_predictions(scannet_root, tmp_path, learning_seed):
    """200 steps on two scenes: VoteNet's detection loss on them (votes, objectness, boxes, classes) falls to under
    0.75 of its start (mean of the last three logged values over the first three; observed 0.16-0.37 over seeds 0-2
    at 1 and 2 threads, ``make check-learning``; 2-thread runs are not bit-reproducible: one seed gave 0.27 and 0.37);
    the evaluation on the same two scenes gives a valid mAP and the test writes predictions. mAP@0.25 itself is
    printed, not asserted: on two scenes it rests on a handful of boxes and varied from 0.07 to 0.77 between runs
    (0.252 on an AMD EPYC, issue #11) while the loss fell alike. Held-out scenes
    are not claimed: measured on two held-out scenes of the same generator, 200 steps leave the vote loss where it was
    (1.11 -> 1.04) and raise the box losses (overfitting); generalisation needs more scenes and steps than a CPU test
    affords."""
    L.seed_everything(learning_seed)
    dm = scannet_datamodule(scannet_root)
    model = Text4PointDetection(dm.class_names, network=partial(TINY_NETWORK, bn_momentum=0.3), num_seed=256,
                                num_proposal=128, lr=0.003, warmup=20, warmup_unit="steps", aux_loss_weight=0.5)
    steps = 200
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, check_val_every_n_epoch=steps, logger=logger,
                        callbacks=[DetectionPredictionWriter()], log_every_n_steps=10, enable_progress_bar=False,
                        enable_model_summary=False,
                        num_sanity_val_steps=0, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    torch.testing.assert_close(model.mean_size, torch.as_tensor(dm.mean_size))   # adopted from the datamodule
    ap25, ap50 = float(trainer.callback_metrics["val/map@0.25"]), float(trainer.callback_metrics["val/map@0.5"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    loss = [e.value for e in events.Scalars("train/loss_det")]
    ratio = sum(loss[-3:]) / sum(loss[:3])
    print(f"after {steps} steps: detection loss {ratio:.2f} of its start, mAP@0.25 {ap25:.3f}, mAP@0.5 {ap50:.3f}")
    assert len(loss) >= 6 and ratio < 0.75, f"detection loss {loss} after {steps} steps on its own two scenes"
    assert 0.0 <= ap25 <= 1.0 and 0.0 <= ap50 <= 1.0

    trainer.test(model, dm)
    files = sorted(Path(trainer.log_dir, "predictions").glob("*.npy"))
    assert [f.stem for f in files] == sorted(dm.val_set.names)
    rows = np.load(files[0])
    assert rows.dtype == PREDICTION_DTYPE and len(rows) > 0
    assert ((rows["score"] >= 0) & (rows["score"] <= 1)).all() and (rows["box"][:, 3:6] >= 0).all()
    assert set(np.unique(rows["label"])) <= set(range(len(dm.class_names))) and (rows["box"][:, 6] == 0).all()

    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/map@0.25", "val/map@0.5", "test/map@0.25", "train/loss_aux", "train/vote"} <= scalars
    assert any(tag.startswith("val_ap@0.5/") for tag in scalars)
    assert "val_scene/bev_gt_green_pred_red" in events.Tags()["images"]


def test_oriented_boxes_run_through_the_cli_with_twelve_heading_bins(tmp_path):
    root = tmp_path / "sunrgbd"
    generate_sunrgbd(root, num_train=2, num_val=1, points_per_scene=POINTS, seed=0, empty_scenes=1)
    cli_main(["fit", "-c", "configs/text4point/detection_sunrgbd.yaml",
              "-c", "configs/text4point/demo_synthetic_sunrgbd_det.yaml", "--data.root", str(root),
              "--data.num_points", str(POINTS), "--data.voxel_size", str(VOXEL), "--trainer.max_steps", "4",
              "--trainer.check_val_every_n_epoch", "2", "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger.init_args.save_dir",
              str(tmp_path / "run"), "--data.num_workers", "0"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = next((tmp_path / "run").rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"val/map@0.25", "val/map@0.5", "train/heading_cls", "train/loss"} <= set(events.Tags()["scalars"])
    assert np.isfinite([e.value for e in events.Scalars("train/loss")]).all()

    checkpoint = next((tmp_path / "run").rglob("last.ckpt"))
    model = Text4PointDetection.load_from_checkpoint(checkpoint).eval()
    assert model.hparams.num_heading_bin == 12 and model.hparams.oriented
    dm = SUNRGBDDataModule(str(root), num_points=POINTS, voxel_size=VOXEL, num_workers=0)
    dm.setup("validate")
    batch = collate_detection([dm.val_set[0]])
    with torch.no_grad():
        det, _ = model(batch)
        _, kept = model.predict_boxes(det)
    assert det.heading_scores.shape[-1] == 12 and det.heading_residuals.shape[-1] == 12
    assert len(kept[0]["boxes"]) and (kept[0]["boxes"][:, 6] != 0).any()   # oriented: decoded headings are kept


def test_scannet_configs_build_and_train_one_step(scannet_root, tmp_path):
    """The ScanNet detection config + its demo overlay build VoteNet on the language-guided network over the ScanNet
    detection data, with the configs' settings, and one training step of the fit command runs: finite losses, every
    trainable parameter (prompt context, TQM, SR-UNet34, VoteNet head) moves, the frozen CLIP text encoder does not."""
    cli = build_cli(["-c", "configs/text4point/detection_scannet.yaml",
                     "-c", "configs/text4point/demo_synthetic_scannet_det.yaml", "--data.root", str(scannet_root),
                     "--data.num_points", str(POINTS), "--data.voxel_size", str(VOXEL), "--trainer.max_steps", "1",
                     "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                     "--trainer.callbacks", "[]", "--data.num_workers", "0"], run=False)
    model, data = cli.model, cli.datamodule
    assert type(model) is Text4PointDetection and type(model.guided) is LanguageGuidedNet
    assert type(data) is ScanNetDetectionDataModule and data.root == scannet_root
    assert model.class_names == list(data.class_names) and len(model.class_names) == 18
    hp = model.hparams
    assert (hp.num_heading_bin, hp.oriented, hp.num_seed, hp.num_proposal, hp.lr) == (1, False, 256, 128, 0.003)
    assert model.guided.net.use_tqm
    assert (data.hparams.num_points, data.hparams.voxel_size, data.hparams.batch_size) == (POINTS, VOXEL, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    cli.trainer.fit(model, datamodule=data)        # what `lightning fit` runs on the CLI's objects
    assert cli.trainer.global_step == 1
    losses = {k: v for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/")}
    assert {"train/loss", "train/loss_det", "train/loss_aux"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["train/loss"] > 0
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(trained) > 100 and frozen and all(n.startswith("guided.text.text_encoder.") for n in frozen)
    assert [n for n in trained if torch.equal(model.get_parameter(n), before[n])] == []
    assert [n for n in frozen if not torch.equal(model.get_parameter(n), before[n])] == []


def built_by_the_cli(config: str, overlay: str, root: Path, *overrides: str) -> Lang3DCLI:
    """The model and datamodule the CLI builds from a config + demo overlay (tiny CLIP), without running."""
    return build_cli(["-c", config, "-c", overlay, "--data.root", str(root), *TINY_CLI, "--data.num_workers", "0",
                      "--trainer.logger", "false", *overrides], run=False)


def test_classes_box_kind_and_mean_sizes_come_from_the_data(scannet_root, tmp_path):
    """The configs leave class_names, oriented and mean_size out: the CLI takes them from the datamodule it built
    (and they are kept in the hyper-parameters a checkpoint reloads from); giving one is an error naming it."""
    sunrgbd = tmp_path / "sunrgbd"
    generate_sunrgbd(sunrgbd, num_train=1, num_val=1, points_per_scene=POINTS, seed=0)
    for name, root in (("scannet", scannet_root), ("sunrgbd", sunrgbd)):
        config = f"configs/text4point/detection_{name}.yaml"
        cli = built_by_the_cli(config, f"configs/text4point/demo_synthetic_{name}_det.yaml", root)
        model, data = cli.model, cli.datamodule
        assert model.class_names == list(data.class_names) and model.hparams.oriented == data.oriented
        torch.testing.assert_close(model.mean_size, torch.as_tensor(np.asarray(data.mean_size), dtype=torch.float32))
        assert model.hparams.mean_size == np.asarray(data.mean_size, dtype=np.float64).tolist()
        for key, value in (("class_names", "[chair, table]"), ("oriented", str(not data.oriented).lower()),
                           ("mean_size", "[[1.0, 1.0, 1.0]]")):
            with pytest.raises(LinkedArgumentError, match=rf"model\.{key} \(it is {type(data).__name__}'s {key}\)"):
                built_by_the_cli(config, f"configs/text4point/demo_synthetic_{name}_det.yaml", root,
                                 f"--model.{key}", value)
    with pytest.raises(RuntimeError, match="mean box sizes are unknown"):
        Text4PointDetection(ScanNetDetectionDataModule.class_names, network=TINY_NETWORK).coder()


def test_birds_eye_view_draws_boxes_where_they_are():
    def extent(image, colour):
        rows, cols = np.nonzero((image == colour).all(-1))
        return cols.max() - cols.min(), rows.max() - rows.min(), cols.mean(), rows.mean()

    along_x = np.array([[0.0, 0.0, 0.5, 4.0, 1.0, 1.0, 0.0]])
    along_y = np.array([[6.0, 0.0, 0.5, 4.0, 1.0, 1.0, np.pi / 2]])   # turned a quarter: long along y
    image = bev_boxes_image(np.zeros((0, 3)), [(along_x, (0, 150, 0)), (along_y, (220, 30, 30))], size=256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    wx, hx, cx, _ = extent(image, (0, 150, 0))
    wy, hy, cy, _ = extent(image, (220, 30, 30))
    assert wx > 3 * hx and hy > 3 * wy         # 4 m × 1 m footprints, the second one turned
    assert cy > cx                             # x grows to the right


def test_pretrained_3d_network_loads_by_name_and_the_head_is_new(tmp_path):
    L.seed_everything(1)
    pretrained = Text4PointPretraining(class_names=list(CLASS_LABELS), **TINY, feature_dim=16, decoder_width=16)
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": pretrained.state_dict()}, path)
    model = Text4PointDetection(["chair", "table"], network=TINY_NETWORK, pretrained=str(path),
                                mean_size=[[0.5, 0.5, 0.9]] * 2)
    source = pretrained.net.state_dict()
    for name, tensor in model.guided.net.state_dict().items():
        if name.startswith("backbone.head."):   # 256 seed-feature channels, not the pre-training's 16
            assert tensor.shape != source[name].shape
        else:
            torch.testing.assert_close(tensor, source[name], rtol=0, atol=0)


def test_learning_rate_warms_up_over_epochs_then_follows_a_cosine(scannet_root):
    class RecordLR(L.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, *args):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm = ScanNetDetectionDataModule(str(scannet_root), num_points=400, voxel_size=VOXEL, batch_size=1,
                                    num_workers=0, augment=False)   # 2 scenes: 2 steps per epoch
    model = Text4PointDetection(dm.class_names, network=TINY_NETWORK, num_seed=64, num_proposal=16, lr=0.01,
                                warmup=1, warmup_unit="epochs")
    record = RecordLR()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_val_batches=0, logger=False,
                        callbacks=[record], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(model, dm)
    expected = [0.5, 1.0] + [0.5 * (1 + np.cos(np.pi * k / 4)) for k in range(4)]   # 2 warm-up steps of 6
    np.testing.assert_allclose(record.lrs, 0.01 * np.array(expected), rtol=1e-6)


def test_warm_up_in_epochs_without_max_epochs_is_a_clear_error(scannet_root):
    """A run bounded by max_steps alone (max_epochs -1): Lightning has not counted an epoch's batches when the
    schedule is built, so warm-up in epochs is refused with the fix, before any step."""
    dm = ScanNetDetectionDataModule(str(scannet_root), num_points=400, voxel_size=VOXEL, batch_size=1,
                                    num_workers=0, augment=False)
    model = Text4PointDetection(dm.class_names, network=TINY_NETWORK, num_seed=64, num_proposal=16,
                                warmup=1, warmup_unit="epochs")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, max_epochs=-1, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="warm-up in epochs.*max_epochs.*warmup_unit: steps"):
        trainer.fit(model, dm)
    assert trainer.global_step == 0

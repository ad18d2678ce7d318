"""Text4Point S3DIS fine-tuning end to end on tiny synthetic rooms: learning, checkpoint loading by name,
full-resolution evaluation, predictions written by `test`, the ablation configs, TensorBoard."""
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from plyfile import PlyData

from datamodules import S3DISDataModule
from datamodules.synthetic.s3dis import generate_s3dis
from lang3d.checkpoint import CheckpointMismatchError
from lang3d.cli import main as cli_main
from text4point import Text4PointPretraining, Text4PointSegmentation

CLASSES = list(S3DISDataModule.class_names)
TINY = dict(clip_model="lang3d-tiny-RN", clip_pretrained=None, lr=0.05)


@pytest.fixture(scope="module")
def tiny_s3dis(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3dis")
    generate_s3dis(root, areas=(1, 5), rooms_per_area=2, points_per_room=6000, seed=0)
    return root


def datamodule(root, **kw):
    dm = S3DISDataModule(str(root), areas=(1, 5), test_area=5, batch_size=2, num_workers=0, **kw)
    dm.prepare_data()
    return dm


@pytest.fixture(scope="module")
def pretrain_checkpoint(tmp_path_factory):
    """A (not trained) pre-training checkpoint with the tiny CLIP, in Lightning's checkpoint layout."""
    path = tmp_path_factory.mktemp("pretrain") / "pretrain.ckpt"
    L.seed_everything(1)
    model = Text4PointPretraining(**TINY, feature_dim=16, decoder_width=16)
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model


def test_pretrained_3d_network_loads_by_name(pretrain_checkpoint):
    path, pretrained = pretrain_checkpoint
    model = Text4PointSegmentation(CLASSES, **TINY, pretrained=str(path))
    for name, tensor in model.guided.net.state_dict().items():
        if name.startswith("backbone.head."):
            assert tensor.shape[-1] == len(CLASSES) or tensor.shape[0] == len(CLASSES)
            continue
        torch.testing.assert_close(tensor, pretrained.net.state_dict()[name], rtol=0, atol=0)


def test_checkpoint_with_wrong_shapes_is_a_named_error(pretrain_checkpoint, tmp_path):
    path, _ = pretrain_checkpoint
    state = torch.load(path, weights_only=False)["state_dict"]
    state["net.fc_expand.weight"] = torch.zeros(7, 256)
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(CheckpointMismatchError, match="net.fc_expand.weight"):
        Text4PointSegmentation(CLASSES, **TINY, pretrained=str(bad))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        Text4PointSegmentation(CLASSES, **TINY, pretrained=str(tmp_path / "missing.ckpt"))


def test_predictions_cover_every_point_through_the_inverse_index(tiny_s3dis):
    dm = datamodule(tiny_s3dis)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    model = Text4PointSegmentation(CLASSES, **TINY).eval()
    with torch.no_grad():
        logits, _ = model(batch)
        pred = model.predict_points(batch)
    assert len(pred) == len(batch["point_segment"])
    voxel_pred = logits.argmax(1)
    expected = torch.stack([voxel_pred[v] for v in batch["inverse"][:, 1].tolist()])
    assert torch.equal(pred, expected)


def test_finetuning_learns_far_above_chance_and_test_writes_predictions(tiny_s3dis, tmp_path):
    L.seed_everything(0)
    dm = datamodule(tiny_s3dis, augment=False)
    # BatchNorm momentum 0.3 (not the recipe's 0.05) so that the running statistics used at evaluation catch
    # up within a 40-step run
    model = Text4PointSegmentation(CLASSES, **{**TINY, "lr": 0.1}, aux_loss_weight=0.5, bn_momentum=0.3)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=40, check_val_every_n_epoch=40, logger=logger, log_every_n_steps=5,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    miou = float(trainer.callback_metrics["val/miou"])
    assert miou > 0.5, f"mIoU {miou:.3f} after 40 steps (chance ≈ {1 / len(CLASSES):.3f})"
    trainer.test(model, dm)
    predictions = sorted(Path(trainer.log_dir, "predictions").rglob("*.ply"))
    assert [p.parent.name + "/" + p.stem for p in predictions] == sorted(dm.val_set.names)
    ply = PlyData.read(str(predictions[0]))
    labels = np.load(predictions[0].with_suffix(".labels.npy"))
    assert len(ply["vertex"]) == len(labels) and set(np.unique(labels)) <= set(range(len(CLASSES)))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/miou", "val/macc", "val/oa", "train/loss_aux", "val_iou/floor"} <= scalars
    assert "val/confusion_matrix" in events.Tags()["images"]
    assert any(tag.startswith("val_room/prediction") for tag in events.Tags()["tensors"])


@pytest.mark.parametrize("row", ["1_scratch", "2_tqm", "3_pretrain", "4_aux", "5_prompt", "6_random_embeddings"])
def test_each_ablation_config_runs(row, tiny_s3dis, pretrain_checkpoint, tmp_path):
    path, _ = pretrain_checkpoint
    cli_main(["fit", "-c", "configs/text4point/finetune_s3dis.yaml", "-c", "configs/text4point/demo_synthetic_s3dis.yaml",
              "-c", f"configs/text4point/ablations/{row}.yaml", "--data.root", str(tiny_s3dis),
              "--model.pretrained", str(path) if row[0] in "3456" else "null", "--trainer.max_steps", "2",
              "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
              "--trainer.callbacks", "[]", "--data.num_workers", "0"])

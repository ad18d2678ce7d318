"""Point-Bind alignment end to end on tiny synthetic data: learning, fit/validate/test wiring, checkpoints, the
CLIP image tower's preprocessing, the zero-shot CLI."""
import json

import lightning as L
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from datamodules.cap3d import Cap3DDataModule
from datamodules.modelnet40 import ModelNet40DataModule, prompt_names, templates
from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.data.object_samples import collate_object_samples
from lang3d.models.clip import CLIPTextEncoder, load_clip
from lang3d.training.cli import main as cli_main
from pointbind import PointBindAlignment, PointBindDataModule
from pointbind.clip_image import CLIPImageEncoder

TINY_BERT = dict(num_groups=16, group_size=16, tokenizer_dim=32, tokenizer_hidden=(16, 32, 32), width=32, depth=2,
                 heads=2, pos_hidden=16, drop_path=0.0)
TINY_MODEL = dict(encoder="pointbert", encoder_options=TINY_BERT, clip_model="lang3d-tiny-ViT", clip_pretrained=None,
                  warmup_steps=2, log_embeddings=20)
CLASSES = ("cone", "bowl", "table", "stairs", "tent", "keyboard")


def trainer(root, **kw):
    return L.Trainer(accelerator="cpu", devices=1, default_root_dir=root, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("pointbind")
    generate_cap3d(root / "cap3d", num_objects=16, views=2, image_size=48, points=1024, seed=0)
    generate_modelnet40(root / "modelnet40", train_per_class=1, test_per_class=2, points=512, formats=("resampled",))
    return root


def whitened_tiny_clip(path, template: str, names) -> None:
    """A tiny random CLIP whose text projection whitens the embeddings of ``template`` over ``names`` (more names
    than embedding dimensions), saved as a weights file. A random 1-layer text tower maps every prompt to nearly
    the same direction (cosine > 0.99 between classes), which leaves InfoNCE almost no signal; whitened, the
    classes lie about as far apart as in a trained CLIP."""
    torch.manual_seed(0)
    model, tokenizer = load_clip("lang3d-tiny-ViT")
    embeddings = CLIPTextEncoder(model, tokenizer)([template.format(n) for n in names])
    values, vectors = torch.linalg.eigh(embeddings.T @ embeddings / len(embeddings))
    with torch.no_grad():
        model.text_projection.copy_(model.text_projection @ vectors @ torch.diag(values.rsqrt()) @ vectors.T)
    torch.save(model.state_dict(), path)


class Captioned(Dataset):
    """ModelNet40 shapes captioned with one template filled with their class name."""

    def __init__(self, shapes, names, template):
        self.shapes, self.names, self.template = shapes, names, template

    def __len__(self):
        return len(self.shapes)

    def __getitem__(self, i):
        shape = self.shapes[i]
        return {"points": shape["points"], "caption": self.template.format(self.names[int(shape["label"])])}


@pytest.mark.learning
def test_zero_shot_after_short_training_is_far_above_chance(tmp_path, learning_seed):
    """Six synthetic classes (8 train / 4 held-out shapes each, randomly turned): aligning a tiny encoder to the
    captions' text embeddings for 200 CPU steps classifies the held-out shapes zero-shot, chance being 1/6. One
    template for captions and classes: the random text tower cannot tell class words from template words, so
    64 averaged templates would blur the classes (the averaging itself is tested against a hand computation)."""
    root, template = tmp_path / "modelnet40", templates()[0]
    generate_modelnet40(root, CLASSES, train_per_class=8, test_per_class=4, points=512, formats=("resampled",))
    (root / "modelnet40_normal_resampled" / "modelnet40_shape_names.txt").write_text("\n".join(CLASSES) + "\n")
    whitened_tiny_clip(tmp_path / "clip.pt", template, prompt_names())
    L.seed_everything(learning_seed)
    data = ModelNet40DataModule(str(root), num_points=256, batch_size=12, num_workers=0, fps_cache=False)
    assert data.dataset("test").names == [f"{c}_{k:04d}" for c in CLASSES for k in range(9, 13)]  # held out
    train = DataLoader(Captioned(data.dataset("train"), CLASSES, template), batch_size=12, shuffle=True,
                       collate_fn=collate_object_samples, drop_last=True)
    model = PointBindAlignment(**{**TINY_MODEL, "clip_pretrained": str(tmp_path / "clip.pt"), "warmup_steps": 5,
                                  "image_loss_weight": 0.0, "zeroshot_templates": [template], "log_embeddings": 0})
    names, classes = model.class_embeddings()  # no datamodule yet: ModelNet40's 40 names
    classes = classes[[names.index(c) for c in CLASSES]]
    assert (classes @ classes.T - torch.eye(len(CLASSES))).max() < 0.8
    run = trainer(tmp_path, max_epochs=50, logger=False, enable_checkpointing=False)
    run.fit(model, train)
    scores = run.test(model, data, verbose=False)[0]
    assert scores["test/zeroshot_top1"] >= 0.75
    assert scores["test_retrieval_classes/text_to_3d/mAP"] >= 0.75


def test_fit_validate_and_test_on_synthetic_cap3d_and_modelnet40(synthetic, tmp_path):
    L.seed_everything(0)
    cache = tmp_path / "clip_cache"
    model = PointBindAlignment(**TINY_MODEL, embedding_cache=str(cache))
    cap3d = Cap3DDataModule(str(synthetic / "cap3d"), num_points=256, image_size=(48, 48), batch_size=4,
                            num_workers=0, cache_dir=str(tmp_path / "fps"), split_fractions=(0.7, 0.3))
    modelnet = ModelNet40DataModule(str(synthetic / "modelnet40"), num_points=256, batch_size=8, num_workers=0,
                                    fps_cache=False)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    run = trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, num_sanity_val_steps=0)
    run.fit(model, PointBindDataModule(cap3d, modelnet))
    metrics = run.callback_metrics
    for key in ("train/loss_text", "train/loss_image", "train/logit_scale", "val/loss", "val/zeroshot_top1",
                "val/zeroshot_top5", "val_retrieval_pairs/3d_to_text/R@1", "val_retrieval_pairs/image_to_3d/mAP",
                "val_retrieval_classes/text_to_3d/mAP", "val_retrieval_classes/3d_to_3d/R@10"):
        assert key in metrics and 0 <= float(metrics[key]) < 100, key
    assert 1 <= float(metrics["train/logit_scale"]) <= 100
    # the second epoch's captions came from the disk cache (the rendered view of an object may change)
    train_objects = len(cap3d.datasets["train"])
    assert model._caches["text"].hits >= train_objects and (cache / "clip_embeddings.h5").is_file()

    ckpt = run.checkpoint_callback.best_model_path
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith(("text_encoder.", "image_encoder.")) for k in saved)  # frozen CLIP left out
    assert any(k.startswith("encoder.") for k in saved) and "logit_scale.log_scale" in saved
    L.seed_everything(0)  # the same random CLIP: it is not in the checkpoint
    restored = PointBindAlignment.load_from_checkpoint(ckpt).eval()
    points = torch.from_numpy(modelnet.dataset("test")[0]["points"])[None]
    with torch.no_grad():
        torch.testing.assert_close(restored(points), model.eval()(points))

    scores = run.test(model, modelnet, verbose=False)[0]
    assert 0 <= scores["test/zeroshot_top1"] <= scores["test/zeroshot_top5"] <= 1
    assert "test_retrieval_classes/3d_to_3d/mAP" in scores
    events = EventAccumulator(str(logger.log_dir)).Reload()
    assert "test/zeroshot_confusion" in events.Tags()["images"]
    assert next(tmp_path.rglob("metadata.tsv")).read_text().count("\n") == 20  # projector: 20 shapes, class names


def test_alignment_batches_are_checked(synthetic):
    model = PointBindAlignment(**TINY_MODEL)
    points = torch.zeros(2, 64, 3)
    with pytest.raises(KeyError, match="caption"):
        model.training_step({"points": points, "label": torch.tensor([0, 1])}, 0)
    with pytest.raises(KeyError, match="load_images"):
        model.training_step({"points": points, "caption": ["a", "b"]}, 0)


def test_image_preprocessing_matches_open_clip():
    torch.manual_seed(0)
    model, _ = load_clip("lang3d-tiny-ViT")
    encoder = CLIPImageEncoder(model)
    coarse = (np.random.default_rng(0).random((6, 9, 3)) * 255).astype(np.uint8)
    image = np.array(Image.fromarray(coarse).resize((90, 60), Image.BILINEAR))  # smooth, not square
    reference = open_clip.image_transform(encoder.image_size, is_train=False, mean=encoder.mean, std=encoder.std,
                                          resize_mode="shortest", interpolation="bicubic")(Image.fromarray(image))
    ours = encoder.preprocess(torch.from_numpy(image)[None])[0]
    assert ours.shape == reference.shape == (3, 32, 32)
    assert (ours - reference).abs().mean() < 0.02  # PIL and torch bicubic resampling differ in rounding only
    with torch.no_grad():
        torch.testing.assert_close(encoder(torch.from_numpy(image)[None])[0], model.encode_image(reference[None])[0],
                                   atol=0.05, rtol=0.05)


def test_zero_shot_cli(synthetic, tmp_path):
    L.seed_everything(0)
    model = PointBindAlignment(**TINY_MODEL)
    ckpt = tmp_path / "model.ckpt"
    run = trainer(tmp_path, max_steps=0, logger=False)
    run.strategy.connect(model)
    run.save_checkpoint(ckpt)
    # LightningCLI rebuilds the model from a checkpoint's hyperparameters when they carry the class path it
    # records; this one comes from the Python API, so the config's model section (plus overrides) is used
    state = torch.load(ckpt, weights_only=False)
    del state["hyper_parameters"]
    torch.save(state, ckpt)
    cli_main(["test", "-c", "configs/pointbind_zeroshot.yaml", "-c", "configs/pointbind_zeroshot_demo.yaml",
               "--data.root", str(synthetic / "modelnet40"), "--data.init_args.num_points", "256",
               "--data.init_args.num_workers", "0", "--data.init_args.fps_cache", "false",
               "--model.init_args.encoder_options", json.dumps(TINY_BERT), "--model.init_args.embedding_cache",
               str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path),
               "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
               "--ckpt_path", str(ckpt)])
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent)).Reload()
    assert 0 <= events.Scalars("test/zeroshot_top1")[-1].value <= 1
    assert "test_retrieval_classes/text_to_3d/mAP" in events.Tags()["scalars"]

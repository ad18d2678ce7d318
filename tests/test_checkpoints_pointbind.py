"""Point-Bind's published checkpoints load into the project's model and reproduce the official code.

Fixtures (tests/data/pointbind_official/, made by make_fixtures.py there from the official repositories at the
commits in SOURCES.json): small official models with random weights saved in the official file layouts, the
official outputs on fixed inputs (golden.pt), and the full-size official key / shape lists (keys_*.json).
"""
import argparse
import json
from pathlib import Path

import lightning as L
import lightning_utilities.core.rank_zero
import pytest
import torch
from torch import nn

from datamodules.cap3d import Cap3DDataModule
from datamodules.modelnet40 import ModelNet40DataModule
from datamodules.modelnet40.prompts import templates
from datamodules.synthetic.cap3d import generate_cap3d
from datamodules.synthetic.modelnet40 import generate_modelnet40
from lang3d.convert import KINDS, ConversionError, read_checkpoint, resolve
from lang3d.models.imagebind import ImageBindTextEncoder, load_towers
from lang3d.training.checkpoint import CheckpointMismatchError, UnsafeCheckpointError, safe_load
from lang3d.training.cli import build_cli
from lang3d.training.cli import main as cli_main
from pointbind.encoders import build_encoder
from pointbind.head import LogitScale, ProjectionHead
from pointbind.module import PointBindAlignment
from pointbind.pretrained import load_encoder, load_release
from pointbind.zeroshot import class_text_embeddings

DATA = Path(__file__).parent / "data" / "pointbind_official"
GOLDEN = torch.load(DATA / "golden.pt", weights_only=True)
OPTIONS = {name: json.loads(GOLDEN["options"][name]) for name in ("i2pmae", "pointbert")}
EMBED = int(GOLDEN["options"]["embed_dim"])
TOL = dict(atol=1e-5, rtol=1e-5)
RELEASES = [("i2pmae", "pointbind_i2pmae_small.pt"), ("pointbert", "pointbind_pointbert_small.pt")]
PRETRAININGS = [("i2pmae", "i2pmae_pretrain_small.pth"), ("pointbert", "pointbert_pretrain_small.pth")]


def parts(encoder: str, embed_dim: int = EMBED, **options) -> dict[str, nn.Module]:
    enc = build_encoder(encoder, **(options or OPTIONS[encoder]))
    return {"encoder": enc, "head": ProjectionHead(enc.out_dim, embed_dim), "logit_scale": LogitScale()}


def official_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------- golden outputs
@pytest.mark.parametrize("encoder, filename", RELEASES)
def test_release_reproduces_the_official_model(encoder, filename):
    case = GOLDEN[filename.removesuffix("_small.pt")]
    model = parts(encoder)
    conversion, report = load_release(model, encoder, str(DATA / filename))
    assert not report.missing and not report.unused
    for module in model.values():
        module.eval()
    with torch.no_grad():
        feature = model["encoder"](case["points"], case["fps_start"])
        embedding = model["head"](feature)
    torch.testing.assert_close(feature, case["feature"], **TOL)
    torch.testing.assert_close(embedding, case["embedding"], **TOL)
    official = official_state(DATA / filename)
    assert model["logit_scale"].log_scale.item() == official["logit_scale"].item()
    # everything of ImageBind but the point head is dropped, and reported
    towers = sorted(k for k in official if k.startswith("bind.") and not k.startswith("bind.modality_head_point."))
    assert sorted(conversion.dropped) == towers and len(towers) > 100


@pytest.mark.parametrize("encoder, filename", PRETRAININGS)
def test_pretrained_encoder_reproduces_the_official_loader(encoder, filename):
    """The official Point-Bind encoder after its own load_model_from_ckpt(pre-training file) vs the project's
    encoder initialised from the same file."""
    case = GOLDEN[filename.removesuffix("_small.pth")]
    enc = build_encoder(encoder, **OPTIONS[encoder])
    conversion, report = load_encoder(enc, encoder, str(DATA / filename))
    assert report.missing == conversion.initialised == (["encoder.norm.weight", "encoder.norm.bias"]
                                                        if encoder == "i2pmae" else [])
    enc.eval()
    with torch.no_grad():
        feature = enc(case["points"], case["fps_start"])
    torch.testing.assert_close(feature, case["feature"], **TOL)


def test_converted_file_gives_the_same_model_as_the_published_one(tmp_path):
    out = tmp_path / "release.ckpt"
    cli_main(["convert", "pointbind", str(DATA / "pointbind_i2pmae_small.pt"), str(out)])
    direct, converted = parts("i2pmae"), parts("i2pmae")
    load_release(direct, "i2pmae", str(DATA / "pointbind_i2pmae_small.pt"))
    conversion, _ = load_release(converted, "i2pmae", str(out))
    assert conversion.meta == {"encoder": "i2pmae"} and conversion.dropped
    for name in direct:
        for (k, a), (_, b) in zip(direct[name].state_dict().items(), converted[name].state_dict().items()):
            assert torch.equal(a, b), k


# --------------------------------------------------------------------------------------------- full-size layouts
def skeleton(keys_file: str, path: Path, wrap=lambda state: state) -> None:
    """A file with every tensor name, shape and dtype of a full-size official file: zero-stride tensors."""
    layout = json.loads((DATA / keys_file).read_text())
    state = {k: torch.zeros((), dtype=getattr(torch, v["dtype"])).expand(v["shape"]) for k, v in layout.items()}
    torch.save(wrap(state), path)


@pytest.mark.parametrize("encoder", ["i2pmae", "pointbert"])
def test_full_size_release_converts_into_the_paper_sized_model(encoder, tmp_path, capsys):
    """Every tensor of a full-size release (ImageBind-Huge included, 1.2 B parameters by shape) is either mapped
    onto the paper-sized model, filling all of it, or dropped; the command line converts it."""
    published, out = tmp_path / f"pointbind_{encoder}.pt", tmp_path / "converted.ckpt"
    skeleton(f"keys_pointbind_{encoder}.json", published)
    cli_main(["convert", "pointbind", str(published), str(out)])
    printed = capsys.readouterr().out
    assert "bind.modality_trunks" in printed and f"encoder {encoder}" in printed
    enc = build_encoder(encoder)  # the paper's sizes
    model = {"encoder": enc, "head": ProjectionHead(enc.out_dim, 1024), "logit_scale": LogitScale()}
    conversion, report = load_release(model, encoder, str(out))
    assert len(report.loaded) == sum(len(m.state_dict()) for m in model.values())
    layout = json.loads((DATA / f"keys_pointbind_{encoder}.json").read_text())
    assert len(conversion.dropped) + len(report.loaded) == len(layout)
    assert all(k.startswith("bind.") for k in conversion.dropped)
    assert layout["bind.modality_head_point.2.weight"]["shape"] == [1024, 512]


@pytest.mark.parametrize("encoder, keys_file, wrap", [
    ("i2pmae", "keys_i2pmae_pretrain.json", lambda s: {"base_model": s, "epoch": 300}),
    ("pointbert", "keys_pointbert_pretrain.json", lambda s: {"base_model": {f"module.{k}": v for k, v in s.items()}}),
])
def test_full_size_pretraining_initialises_the_paper_sized_encoder(encoder, keys_file, wrap, tmp_path):
    published = tmp_path / "pretrain.pth"
    skeleton(keys_file, published, wrap)
    enc = build_encoder(encoder)
    conversion, report = load_encoder(enc, encoder, str(published))
    assert sorted(report.loaded + report.missing) == sorted(f"encoder.{k}" for k in enc.state_dict())
    assert report.missing == conversion.initialised


# --------------------------------------------------------------------------------------------- safe loading
def test_pickled_objects_are_refused_naming_file_and_type(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"base_model": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"with_args\.pth.*argparse\.Namespace"):
        safe_load(path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        read_checkpoint(path, ["i2pmae-pretrain"])


def test_numpy_metrics_need_exactly_the_allowed_scalar_types():
    """The pre-training files pickle numpy scalars (SVM accuracy); plain weights-only loading refuses them, the
    kinds allow exactly numpy's scalar reconstruction."""
    path = DATA / "i2pmae_pretrain_small.pth"
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        safe_load(path)
    raw = safe_load(path, KINDS["i2pmae-pretrain"].allowed_globals)
    assert float(raw["metrics"]["acc"]) == pytest.approx(0.9335)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_released_file_is_memory_mapped_not_read(tmp_path):
    """The file is mapped, so tensors that are dropped (ImageBind's towers) are never read into memory; a file
    in torch.save's legacy (non-zip) format, which cannot be mapped, still loads."""
    path = DATA / "pointbind_i2pmae_small.pt"
    raw = safe_load(path)
    assert str(path.resolve()) in Path("/proc/self/maps").read_text()
    legacy = tmp_path / "legacy.pt"
    torch.save(dict(raw), legacy, _use_new_zipfile_serialization=False)
    assert str(legacy) not in Path("/proc/self/maps").read_text()
    assert torch.equal(read_checkpoint(legacy, ["pointbind"]).state["head.proj.weight"], raw["pc_projection"].t())


# --------------------------------------------------------------------------------------------- clear errors
def test_release_into_the_wrong_space_or_encoder_is_a_clear_error():
    with pytest.raises(CheckpointMismatchError, match="pointbind_imagebind.yaml"):
        load_release(parts("i2pmae", embed_dim=EMBED * 2), "i2pmae", str(DATA / "pointbind_i2pmae_small.pt"))
    with pytest.raises(CheckpointMismatchError, match="'i2pmae' 3D encoder"):
        load_release(parts("pointbert"), "pointbert", str(DATA / "pointbind_i2pmae_small.pt"))
    wider = dict(OPTIONS["i2pmae"], dims=[12, 24, 96])
    shapes = r"tensor 'encoder\.embed\.2\.second\.0\.weight' has shape \(48, 48, 1\), the model expects \(96, 48, 1\)"
    with pytest.raises(CheckpointMismatchError, match=shapes):
        load_release(parts("i2pmae", **wider), "i2pmae", str(DATA / "pointbind_i2pmae_small.pt"))


def test_unknown_tensor_or_layout_is_a_clear_error(tmp_path):
    state = official_state(DATA / "pointbind_pointbert_small.pt")
    state["point_encoder.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(ConversionError, match="point_encoder.extra.weight"):
        read_checkpoint(tmp_path / "odd.pt", ["pointbind"])
    with pytest.raises(ConversionError, match="not a checkpoint of kind pointbind"):
        read_checkpoint(DATA / "pointbert_pretrain_small.pth", ["pointbind", "i2pmae-pretrain"])
    del state["point_encoder.extra.weight"], state["point_encoder.norm.weight"]
    torch.save(state, tmp_path / "short.pt")
    with pytest.raises(CheckpointMismatchError, match=r"\(1 problems\): missing tensor 'encoder.norm.weight'"):
        load_release(parts("pointbert"), "pointbert", str(tmp_path / "short.pt"))


def test_tags_resolve_in_the_checkpoint_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LANG3D_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"drive\.google\.com.*checkpoints"):
        resolve("pointbind_i2pmae")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "pointbind_i2pmae.pt").write_bytes((DATA / "pointbind_i2pmae_small.pt").read_bytes())
    conversion = read_checkpoint("pointbind_i2pmae", ["pointbind"])
    assert conversion.meta["encoder"] == "i2pmae"


# --------------------------------------------------------------------------------------------- the Lightning module
def small_module(**kwargs) -> PointBindAlignment:
    encoder = kwargs.pop("encoder", "i2pmae")
    return PointBindAlignment(encoder=encoder, encoder_options=OPTIONS[encoder], clip_model="lang3d-tiny-ViT",
                              clip_pretrained=None, **kwargs)


def test_module_embeds_points_as_the_released_model():
    module = small_module(pretrained=str(DATA / "pointbind_i2pmae_small.pt"))
    module.load_published()
    module.eval()
    case = GOLDEN["pointbind_i2pmae"]  # I2P-MAE's FPS starts at index 0, as the module's
    with torch.no_grad():
        torch.testing.assert_close(module(case["points"]), case["embedding"], **TOL)
    with pytest.raises(ValueError, match="not both"):
        small_module(pretrained="pointbind_i2pmae", encoder_init="i2pmae_pretrain")


def release_with_towers(path: Path) -> Path:
    """The small I2P-MAE release with tiny ImageBind towers (random weights, the official layout of
    tests/data/imagebind_official/imagebind_tiny.pth) under bind.*, as a real release holds ImageBind-Huge."""
    release = {k: v for k, v in official_state(DATA / "pointbind_i2pmae_small.pt").items()
               if not k.startswith("bind.") or k.startswith("bind.modality_head_point")}
    towers = official_state(DATA.parent / "imagebind_official" / "imagebind_tiny.pth")
    torch.save({**release, **{f"bind.{k}": v for k, v in towers.items()}}, path)
    return path


def test_zero_shot_test_of_a_release_through_the_cli(tmp_path, caplog):
    """lightning test -c configs/pointbind_zeroshot.yaml -c configs/pointbind_imagebind.yaml, with a small release
    holding tiny ImageBind towers, as the shipped config (only the architecture shrunk): the 3D model is loaded (and
    reported) when the run starts, no --ckpt_path; the text tower alone comes from the same file, and the class
    embeddings are ImageBind's."""
    generate_modelnet40(tmp_path / "mn40", train_per_class=1, test_per_class=1, points=256, formats=("resampled",))
    release = release_with_towers(tmp_path / "pointbind_i2pmae.pt")
    args = ["test", "-c", "configs/pointbind_zeroshot.yaml", "-c", "configs/pointbind_imagebind.yaml",
            "--model.init_args.clip_model", "lang3d-tiny-imagebind", "--model.init_args.clip_pretrained", str(release),
            "--model.init_args.encoder_options", json.dumps(OPTIONS["i2pmae"]),
            "--model.init_args.embedding_cache", str(tmp_path / "cache"),
            "--data.root", str(tmp_path / "mn40"), "--data.init_args.num_workers", "0",
            "--data.init_args.num_points", "256", "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    with pytest.raises(CheckpointMismatchError, match="'pointbert' 3D encoder"):  # loaded, strictly, at the start
        cli_main([*args, "--model.init_args.pretrained", str(DATA / "pointbind_pointbert_small.pt")])
    lightning_info = lightning_utilities.core.rank_zero.log  # the logger of rank_zero_info
    lightning_info.addHandler(caplog.handler)
    try:
        cli = build_cli([*args, "--model.init_args.pretrained", str(release)])
    finally:
        lightning_info.removeHandler(caplog.handler)
    assert "pointbind_i2pmae.pt (pointbind, encoder i2pmae): kept" in caplog.text
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
    module = cli.model
    assert module.image_encoder is None and module.audio_encoder is None   # modalities: [text]
    text = load_towers("lang3d-tiny-imagebind", release, ["text"])["text"]
    names, classes = module.class_embeddings()
    expected = class_text_embeddings(ImageBindTextEncoder(text), names, templates())
    torch.testing.assert_close(classes, expected)


class EncoderAtStart(L.Callback):
    def on_train_start(self, trainer, module):
        self.state = {f"encoder.{k}": v.clone() for k, v in module.encoder.state_dict().items()}


def test_encoder_init_is_used_by_fit_and_not_needed_to_test_its_checkpoint(tmp_path):
    """fit starts from the pre-trained encoder; testing the resulting checkpoint restores its weights and does not
    read the pre-training file again (here: deleted)."""
    generate_cap3d(tmp_path / "cap3d", num_objects=8, views=1, image_size=32, points=256)
    generate_modelnet40(tmp_path / "mn40", train_per_class=1, test_per_class=1, points=256, formats=("resampled",))
    init = tmp_path / "pointbert_pretrain.pth"
    init.write_bytes((DATA / "pointbert_pretrain_small.pth").read_bytes())
    options = dict(encoder="pointbert", encoder_init=str(init), image_loss_weight=0.0, warmup_steps=1)
    module, start = small_module(**options), EncoderAtStart()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[start],
                        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, Cap3DDataModule(str(tmp_path / "cap3d"), num_points=256, load_images=False, batch_size=4,
                                        num_workers=0, cache_dir=str(tmp_path / "cache")))
    expected = read_checkpoint(init, ["pointbert-pretrain"]).state
    assert start.state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(start.state[name], value), name
    trained = module.state_dict()["encoder.cls_pos"].clone()
    assert not torch.equal(trained, expected["encoder.cls_pos"])
    ckpt = tmp_path / "aligned.ckpt"
    trainer.save_checkpoint(ckpt)
    init.unlink()
    fresh = small_module(**options)  # as `lightning test --ckpt_path` rebuilds it from the saved hyperparameters
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path).test(
        fresh, ModelNet40DataModule(str(tmp_path / "mn40"), num_points=256, batch_size=4, num_workers=0,
                                    cache_dir=str(tmp_path / "cache")), ckpt_path=ckpt)
    assert torch.equal(fresh.state_dict()["encoder.cls_pos"], trained)

"""SEPEFineTuning: tiny Point-E + tiny random ViT CLIP on synthetic Cap3D data (CPU)."""
import shutil
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from plyfile import PlyData

from datamodules.cap3d import Cap3DDataModule
from datamodules.synthetic.cap3d import VIEW_DIR, generate_cap3d
from lang3d.checkpoint import CheckpointMismatchError
from lang3d.lora import LoRALinear
from lang3d.point_e import build_model
from sepe.module import SEPEFineTuning
from sepe.predict_data import SEPEPromptsDataModule

TINY = dict(width=32, layers=3, heads=2)


def make_module(**kw):
    args = dict(clip_model="lang3d-tiny-ViT", clip_pretrained=None, model_overrides=TINY,
                upsampler_overrides=TINY, base_points=48, upsample_points=32, sample_steps=2, val_sample_steps=2,
                fusion_heads=2, lr_fusion=3e-3, lr_backbone=1e-3)
    return SEPEFineTuning(**{**args, **kw})


@pytest.fixture(scope="module")
def cap3d_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap3d") / "cap3d"
    generate_cap3d(root, num_objects=6, views=2, image_size=32, points=512)
    return root


def datamodule(root, **kw):
    args = dict(subset="ABO", num_points=128, image_size=(32, 32), batch_size=3, num_workers=0,
                split_fractions=(0.99, 0.01), fps_cache=False)
    return Cap3DDataModule(str(root), **{**args, **kw})


def batch_of(root):
    dm = datamodule(root)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_diffusion_loss_falls(cap3d_root, fusion):
    torch.manual_seed(0)
    module = make_module(fusion=fusion, upsample_points=0)
    batch = batch_of(cap3d_root)
    opt = module.configure_optimizers()
    gen = lambda: torch.Generator().manual_seed(1)   # noqa: E731 - fixed t and noise: losses comparable
    with torch.no_grad():
        before = module.losses(batch, gen())["diffusion"].item()
    for _ in range(60):
        opt.zero_grad()
        module.losses(batch)["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = module.losses(batch, gen())["diffusion"].item()
    assert after < 0.8 * before, (before, after)


def trainable_names(module):
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_last_blocks_trainable_only():
    module = make_module(num_trainable_blocks=2, train_output_head=False)
    names = trainable_names(module)
    assert names, "nothing trainable"
    for n in names:
        assert n.startswith(("net.fusion.", "net.model.backbone.resblocks.1.", "net.model.backbone.resblocks.2.")), n
    assert any(n.startswith("net.model.backbone.resblocks.2.") for n in names)
    assert not any(n.startswith(("clip.", "upsampler.model.", "net.model.clip_embed")) for n in names)
    assert "net.model.output_proj.weight" not in names   # given base weights, the head stays frozen
    # the concat MLP is LoRALinear (rank 8): its frozen bases are not trainable, A/B are
    assert "net.fusion.fc1.lora_A" in names and "net.fusion.fc1.weight" not in names
    # random init (no base checkpoint): the zero-initialised read-out is trained too, else no gradient flows
    assert {"net.model.output_proj.weight", "net.model.ln_post.weight"} <= trainable_names(make_module())


def test_lora_trainable_only_and_groups():
    module = make_module(trainable="lora", lora_rank=4, lora_alpha=8.0, fusion="cross_attention")
    names = trainable_names(module)
    backbone = {n for n in names if n.startswith("net.model.")}
    assert backbone and all(n.endswith(("lora_A", "lora_B")) or ".output_proj." in n or ".ln_post." in n
                            for n in backbone)
    layers = [m for m in module.net.model.backbone.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 4 * 3 and all(m.rank == 4 and m.scaling == 2.0 for m in layers)
    groups = module.configure_optimizers().param_groups
    assert {g["name"]: g["lr"] for g in groups} == {"fusion": 3e-3, "backbone": 1e-3}
    by_id = {id(p): n for n, p in module.named_parameters()}
    grouped = {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups}
    assert grouped["backbone"] == backbone
    assert grouped["fusion"] == {n for n in names if n.startswith("net.fusion.")}
    assert grouped["fusion"] | grouped["backbone"] == names


def test_x0_from_the_single_forward_pass(cap3d_root):
    module = make_module(upsample_points=0, geometric_max_t=None)
    net_calls, backbone_calls = [], []
    module.net.model.backbone.register_forward_hook(lambda *_: backbone_calls.append(1))
    module.net.register_forward_hook(lambda m, a, k, out: net_calls.append(out), with_kwargs=True)
    terms = module.losses(batch_of(cap3d_root))
    assert len(net_calls) == 1 and len(backbone_calls) == 1   # one denoiser call per step, no second noise draw
    # the geometric terms are functions of that one output: their gradient reaches it
    (grad,) = torch.autograd.grad(terms["chamfer"] + terms["color"], net_calls[0], retain_graph=True)
    assert grad.abs().sum() > 0
    (grad,) = torch.autograd.grad(terms["chamfer"], module.net.model.output_proj.weight)
    assert grad.abs().sum() > 0


def test_predict_writes_ply_and_npz(tmp_path, cap3d_root):
    image = next((cap3d_root / VIEW_DIR).iterdir()) / "00000.png"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red chair\n\n# comment\na small blue table\n")
    module = make_module(fusion="cross_attention")
    dm = SEPEPromptsDataModule(images=[str(image)], prompts_file=str(prompts), batch_size=2, steps=2,
                               output_dir=str(tmp_path / "out"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    out = trainer.predict(module, datamodule=dm)
    assert out[0]["clouds"].shape == (2, 6, 80)
    ply = PlyData.read(str(tmp_path / "out" / "0000_a_red_chair.ply"))["vertex"]
    assert len(ply) == 80 and ply["red"].dtype == np.uint8
    npz = np.load(tmp_path / "out" / "0001_a_small_blue_table.npz")
    assert npz["coords"].shape == (80, 3) and npz["colors"].shape == (80, 3) and str(npz["prompt"]) == "a small blue table"
    np.testing.assert_allclose(npz["coords"], out[0]["clouds"][1, :3].T.numpy(), atol=1e-6)


def test_checkpoint_wrong_shape_names_tensor(tmp_path):
    from lang3d.point_e import CLIPConditioner
    clip = CLIPConditioner.load("lang3d-tiny-ViT", None)
    model = build_model("base40M", grid_tokens=clip.grid_tokens, grid_width=clip.grid_width, **TINY)
    state = model.state_dict()
    state["input_proj.weight"] = torch.zeros(32, 7)
    path = tmp_path / "base_40m.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"input_proj\.weight.*\[32, 7\]"):
        make_module(base_checkpoint=str(path))
    del state["input_proj.weight"]
    torch.save({k: v for k, v in model.state_dict().items()}, path)
    make_module(base_checkpoint=str(path), trainable="lora")   # a correct file loads (strictly, before LoRA)


def test_datamodule_errors_surface(tmp_path, cap3d_root):
    root = tmp_path / "cap3d"
    shutil.copytree(cap3d_root, root)
    with open(root / "Cap3D_automated_ABO.csv", "a") as f:
        f.write("B0UNKNOWN1,a chair nobody made\n")
    with pytest.warns(UserWarning, match="have no point cloud"):
        datamodule(root).setup("fit")
    uid = next((root / VIEW_DIR).iterdir()).name
    shutil.rmtree(root / VIEW_DIR / uid)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=1, enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FileNotFoundError, match=f"{uid}.*no rendered views"):
            trainer.fit(make_module(upsample_points=0), datamodule=datamodule(root))


def test_fit_with_validation_logs(tmp_path, cap3d_root):
    from lightning.pytorch.loggers import TensorBoardLogger
    dm = datamodule(cap3d_root, split_fractions=(0.5, 0.5), batch_size=2, drop_last=False)
    assert len(dm.splits()["train"]) and len(dm.splits()["val"])
    trainer = L.Trainer(accelerator="cpu", limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
                        enable_progress_bar=False, logger=TensorBoardLogger(tmp_path), max_epochs=2,
                        enable_checkpointing=False)
    trainer.fit(make_module(), datamodule=dm)
    logged = trainer.callback_metrics
    for key in ("train/diffusion", "train/chamfer", "train/color", "train/smooth", "train/uniform",
                "val/loss", "val/sample_chamfer", "val/sample_emd"):
        assert key in logged and torch.isfinite(logged[key]), key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(trainer.log_dir)
    events.Reload()
    assert any(tag.startswith("val/generated_render_") for tag in events.Tags()["images"])


def test_test_stage_scores_generated_clouds(tmp_path, cap3d_root):
    """Chamfer and EMD against the ground truth for every held-out object; R-precision once there are more clouds
    than distractors (here: 1 distractor); P-FID / P-IS with a feature network checkpoint."""
    from sepe.pointcloud_features import PointNet2Classification
    network = tmp_path / "pn2.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 4, "width": 1},
                "state_dict": PointNet2Classification(num_classes=4, width=1).state_dict()}, network)
    dm = datamodule(cap3d_root, split_fractions=(0.5, 0.5), batch_size=2, drop_last=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    module = make_module(upsample_points=0, eval_num_distractors=1, eval_feature_network=str(network))
    scores = trainer.test(module, datamodule=dm)[0]
    for key in ("test/chamfer", "test/emd", "test/clip_r_precision", "test/p_fid", "test/p_is"):
        assert key in scores and np.isfinite(scores[key]), key
    assert 0.0 <= scores["test/clip_r_precision"] <= 1.0

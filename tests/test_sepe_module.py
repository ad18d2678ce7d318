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
from lang3d.models.lora import LoRALinear
from lang3d.models.point_e import build_model
from lang3d.training.checkpoint import CheckpointMismatchError
from sepe.module import SEPEFineTuning
from sepe.predict_data import SEPEPromptsDataModule
from sepe.writers import GeneratedCloudWriter

TINY = dict(width=32, layers=3, heads=2)


def make_module(**kw):
    args = dict(clip_model="lang3d-tiny-ViT", clip_pretrained=None, model_overrides=TINY,
                upsampler_overrides=TINY, base_points=48, upsample_points=32, sample_steps=2, val_sample_steps=2,
                fusion_heads=2, lr_fusion=3e-3, lr_backbone=1e-3, eval_clip_model="lang3d-tiny-ViT",
                eval_clip_pretrained=None)
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


@pytest.mark.learning
@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_diffusion_loss_falls(cap3d_root, fusion, learning_seed):
    torch.manual_seed(learning_seed)
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
    # observed after / before 0.58-0.63 (seeds 0-2, both fusions, 1 and 2 threads): a 37 % fall at least, asserted
    # 15 %
    assert after < 0.85 * before, (before, after)


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
    # the fusion's copy of clip_embed is LoRALinear (rank 8): its copied weights are frozen, A/B train; the
    # text MLP is plain and trainable
    assert {"net.fusion.image_embed.1.lora_A", "net.fusion.fc1.weight", "net.fusion.fc2.weight"} <= names
    assert "net.fusion.image_embed.1.weight" not in names
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
    dm = SEPEPromptsDataModule(images=[str(image)], prompts_file=str(prompts), batch_size=2, steps=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[GeneratedCloudWriter(output_dir=str(tmp_path / "out"))])
    out = trainer.predict(module, datamodule=dm)
    assert out[0]["clouds"].shape == (2, 6, 80)
    ply = PlyData.read(str(tmp_path / "out" / "0000_a_red_chair.ply"))["vertex"]
    assert len(ply) == 80 and ply["red"].dtype == np.uint8
    npz = np.load(tmp_path / "out" / "0001_a_small_blue_table.npz")
    assert (npz["coords"].shape == (80, 3) and npz["colors"].shape == (80, 3)
            and str(npz["prompt"]) == "a small blue table")
    np.testing.assert_allclose(npz["coords"], out[0]["clouds"][1, :3].T.numpy(), atol=1e-6)


def test_checkpoint_wrong_shape_names_tensor(tmp_path):
    from lang3d.models.point_e import CLIPConditioner
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


def test_validation_losses_are_means_over_objects(cap3d_root):
    """``validate`` logs every loss of ``loss_names`` (the keys of ``losses``, with either upsampler) as its mean
    over the validated objects: batches of 2 and 1 object weigh 2 and 1. A validation split without objects is an
    error naming the cause, not NaN metrics."""
    for conditioning in ("image_grid", "fused"):
        module = make_module(upsampler_conditioning=conditioning, base_points=48, upsample_points=32)
        assert set(module.losses(batch_of(cap3d_root))) == set(module.loss_names())
    module = make_module(upsample_points=0).eval()
    dm = datamodule(cap3d_root, split_fractions=(0.5, 0.5), batch_size=2, drop_last=False, max_val_objects=3)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert [len(b["caption"]) for b in batches] == [2, 1]
    with torch.no_grad():
        terms = [module.losses(b, module.batch_generator(b)) for b in batches]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    logged = trainer.validate(module, datamodule=dm)[0]
    assert {f"val/{name}" for name in module.loss_names()} <= logged.keys()
    for name in module.loss_names():
        expected = (2 * terms[0][name] + terms[1][name]) / 3
        assert logged[f"val/{name}"] == pytest.approx(float(expected), rel=1e-5), name
    empty = datamodule(cap3d_root, split_fractions=(0.5, 0.5), max_val_objects=0)
    with pytest.raises(ValueError, match="no object to validate.*validation split is empty"):
        trainer.validate(module, datamodule=empty)


def test_clouds_normalised_into_the_unit_sphere_are_refused(cap3d_root):
    """Served as they are, Cap3D's clouds are in Point-E's units: every object's largest side is 1 (Point-E's box).
    Normalised into the unit sphere and halved (what the docs used to advise, ``xyz_scale: 0.5``), the largest side
    depends on the object's shape, so no constant scale gives Point-E's units: SEPE refuses ``normalize: true``."""
    served = {}
    for normalize in (False, True):
        dm = datamodule(cap3d_root, split_fractions=(1.0, 0.0), batch_size=6, normalize=normalize)
        dm.setup("fit")
        points = next(iter(dm.train_dataloader()))["points"]
        served[normalize] = (dm, (points.amax(1) - points.amin(1)).amax(1))
    torch.testing.assert_close(served[False][1], torch.ones(6), atol=0.02, rtol=0)
    halved = 0.5 * served[True][1]
    assert halved.max() / halved.min() > 1.1 and bool((halved < 0.9).any()), halved
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=1, limit_val_batches=0, enable_progress_bar=False,
                        enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"Cap3DDataModule\(normalize=True\).*set data.normalize false"):
        trainer.fit(make_module(upsample_points=0), datamodule=served[True][0])
    trainer.fit(make_module(upsample_points=0), datamodule=served[False][0])   # Cap3D's own units train
    assert trainer.global_step == 1


def test_test_stage_scores_generated_clouds(tmp_path, cap3d_root):
    """Chamfer and EMD against the ground truth for every test object; R-precision with the independent evaluation
    CLIP and with the conditioning CLIP once there are more clouds than distractors (here: 1 distractor); P-FID /
    P-IS with a feature network checkpoint."""
    from sepe.pointcloud_features import PointNet2Classification
    network = tmp_path / "pn2.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 4, "width": 1},
                "state_dict": PointNet2Classification(num_classes=4, width=1).state_dict()}, network)
    dm = datamodule(cap3d_root, split_fractions=(0.4, 0.2, 0.4), batch_size=2, drop_last=False, num_points=48)
    assert len(dm.splits()["test"]) == 4
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    module = make_module(upsample_points=0, eval_num_distractors=1, eval_feature_network=str(network))
    scores = trainer.test(module, datamodule=dm)[0]
    for key in ("test/chamfer", "test/emd", "test/clip_r_precision", "test/clip_r_precision_cond_clip", "test/p_fid",
                "test/p_is"):
        assert key in scores and np.isfinite(scores[key]), key
        assert "r_precision" not in key or 0.0 <= scores[key] <= 1.0
    # the reported R-precision uses its own CLIP, not the one the generator is conditioned on
    assert module.test_r_precision.clip is not module.clip.model
    assert module.test_r_precision_cond.clip is module.clip.model
    with pytest.raises(ValueError, match="no test split"):
        datamodule(cap3d_root, split_fractions=(0.5, 0.5)).test_dataloader()
    empty = datamodule(cap3d_root, split_fractions=(0.4, 0.2, 0.4), max_val_objects=0)   # caps the test split too
    with pytest.raises(ValueError, match="no object to test on any process"):
        trainer.test(module, datamodule=empty)


def _perturb(module: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    """Every trainable tensor of ``module`` += N(0, std²): a stand-in for fine-tuned weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def _random_point_e(module: SEPEFineTuning, seed: int = 5) -> None:
    """Non-zero output projections in both Point-E models (a fresh model's is zero: every output the same)."""
    g = torch.Generator().manual_seed(seed)
    for model in (module.net.model, module.upsampler if not module.fused_upsampler else module.upsampler.model):
        with torch.no_grad():
            model.output_proj.weight.copy_(0.3 * torch.randn(model.output_proj.weight.shape, generator=g))


def _images(n):
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def _point_e_two_stage(module: SEPEFineTuning, upsampler, prompts, images, steps, seed):
    """Point-E's own two-stage sampling with the module's Point-E models (no fusion): base40M, then the upsampler
    given the image grid, both conditioned on clip_embed of the CLIP grid."""
    from lang3d.models.point_e import GaussianDiffusion, PointCloudSampler, StageConfig
    hp = module.hparams
    sampler = PointCloudSampler(
        [module.net.model, upsampler],
        [GaussianDiffusion.from_schedule("cosine"), GaussianDiffusion.from_schedule("linear")],
        [StageConfig(hp.base_points, 3.0, steps, sigma_max=120.0, s_churn=3.0),
         StageConfig(hp.upsample_points, 3.0, steps, sigma_max=160.0)])
    grid = module.clip.embed_images_grid(list(images.numpy()))
    return sampler.sample(len(prompts), {"grid": grid}, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
@pytest.mark.parametrize("upsampler_conditioning", ["image_grid", "fused"])
def test_generation_starts_as_point_e_two_stage(fusion, upsampler_conditioning):
    """At initialisation (fusions unchanged) SEPE's two-stage sample is Point-E's, whichever stage-2 choice."""
    module = make_module(fusion=fusion, upsampler_conditioning=upsampler_conditioning).eval()
    _random_point_e(module)
    prompts, images = ["a red chair", "a tall blue lamp"], _images(2)
    ours = module.generate(prompts, images, steps=3, generator=torch.Generator().manual_seed(11))
    upsampler = module.upsampler if upsampler_conditioning == "image_grid" else module.upsampler.model
    reference = _point_e_two_stage(module, upsampler, prompts, images, 3, 11)
    assert ours.shape == (2, 6, 48 + 32)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_stage_two_gets_point_e_condition_whatever_the_fusion():
    """Default stage 2: the frozen upsampler conditioned on its own clip_embed of the image grid (as Point-E), even
    when the base fusion has moved far from its start: given the base stage's points, stage 2 is Point-E's."""
    from lang3d.models.point_e import GaussianDiffusion, PointCloudSampler, StageConfig
    module = make_module(fusion="cross_attention").eval()
    _random_point_e(module)
    _perturb(module.net.fusion, 1)
    prompts, images = ["a red chair", "a tall blue lamp"], _images(2)
    cond = module.condition(prompts, images)
    ours = module.generate(prompts, images, steps=3, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    base_stage = PointCloudSampler([module.net], [module.diffusion],
                                   [StageConfig(48, 3.0, 3, sigma_max=120.0, s_churn=3.0)])
    *_, low_res = base_stage.sample_progressive(2, cond, generator)
    point_e_stage2 = PointCloudSampler([module.upsampler], [GaussianDiffusion.from_schedule("linear")],
                                       [StageConfig(32, 3.0, 3, sigma_max=160.0)])
    new = point_e_stage2.sample(2, {"grid": cond["grid"], "low_res": low_res}, generator)
    torch.testing.assert_close(ours[:, :, 48:], new, rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in module.upsampler.parameters())
    assert "upsampler.model.clip_embed.1.weight" not in dict(module.named_parameters())   # no wrapper, no fusion


def test_fused_upsampler_trains_on_its_own_schedule(cap3d_root):
    """``upsampler_conditioning="fused"``: its own fusion (warm-started from its own clip_embed), its diffusion loss on
    the served points after the first base_points given those as low_res; gradients reach its fusion."""
    module = make_module(upsampler_conditioning="fused")
    _random_point_e(module)                       # a zero output_proj would pass no gradient back
    assert module.upsampler.fusion is not module.net.fusion
    fusion, upsampler = module.upsampler.fusion, module.upsampler.model
    torch.testing.assert_close(fusion.image_embed[1].weight, upsampler.clip_embed[1].weight, rtol=0, atol=0)
    seen = []
    module.upsampler.register_forward_hook(lambda m, a, k, out: seen.append((a[0], k["low_res"])), with_kwargs=True)
    dm = datamodule(cap3d_root, num_points=48 + 32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module.train()
    terms = module.losses(batch, torch.Generator().manual_seed(0))
    assert "upsampler_diffusion" in terms and torch.isfinite(terms["upsampler_diffusion"])
    (x_t, low_res), = seen
    assert x_t.shape == (3, 6, 32)
    cloud = module.batch_cloud(batch)
    kept = low_res.flatten(1).abs().sum(1) > 0                          # samples whose condition was not dropped
    torch.testing.assert_close(low_res[kept], cloud[kept, :, :48])
    terms["loss"].backward()
    grads = [p.grad for p in module.upsampler.fusion.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    by_id = {id(p): n for n, p in module.named_parameters()}
    groups = {g["name"]: {by_id[id(p)] for p in g["params"]} for g in module.configure_optimizers().param_groups}
    assert any(n.startswith("upsampler.fusion.") for n in groups["fusion"])
    assert any(n.startswith("upsampler.model.backbone.resblocks.") for n in groups["backbone"])
    short = datamodule(cap3d_root, num_points=60)
    short.setup("fit")
    with pytest.raises(ValueError, match="trains on 80 points.*serves 60: raise data.num_points"):
        module.losses(next(iter(short.train_dataloader())), torch.Generator().manual_seed(0))


def test_training_draws_follow_seed_step_and_rank(cap3d_root):
    """Timesteps, noise and condition dropout come from the step's generator, not the global RNG, and the
    generator's seed differs per rank, step and micro-batch, and is reproducible."""
    from sepe.module import step_seed
    seeds = {step_seed(0, step, micro, rank) for step in range(3) for micro in range(2) for rank in range(4)}
    assert len(seeds) == 3 * 2 * 4
    assert step_seed(0, 5, 0, 1) == step_seed(0, 5, 0, 1) != step_seed(1, 5, 0, 1)
    module = make_module(upsample_points=0, cond_drop_prob=0.5).train()
    batch = batch_of(cap3d_root)
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)                  # what seed_everything makes equal on every rank
        with torch.no_grad():
            losses.append(module.losses(batch, torch.Generator().manual_seed(step_seed(0, 3, 0, 0)))["loss"])
    assert losses[0] == losses[1]
    with torch.no_grad():
        other_rank = module.losses(batch, torch.Generator().manual_seed(step_seed(0, 3, 0, 1)))["loss"]
    assert other_rank != losses[0]

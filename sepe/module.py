"""SEPE fine-tuning of Point-E base40M with fused CLIP text + image conditioning, and two-stage generation.

One diffusion definition everywhere (Point-E's: cosine base / linear upsampler schedules, channel scaling inside
``GaussianDiffusion``). Each training step makes ONE model call: the diffusion loss and the geometric losses on
x̂0 (``pred_xstart`` of that same call) share it.

Data units: the Cap3D datamodule serves xyz centred and scaled into the unit sphere and colours in 0..1; Point-E
wants xyz in about [-0.5, 0.5] and RGB 0..255. ``batch_cloud`` multiplies xyz by ``xyz_scale`` (default 0.5:
unit sphere -> radius 0.5, the scale of Cap3D's own ±0.5 clouds) and colours by 255.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lang3d.atomic import atomic_write
from lang3d.checkpoint import FrozenWeightsNotSaved
from lang3d.data.sampling import seed_from_names
from lang3d.lora import POINT_E_LORA_TARGETS, apply_lora
from lang3d.ply import write_point_ply
from lang3d.point_e import (CLIPConditioner, GaussianDiffusion, PointCloudSampler, StageConfig, build_model,
                            load_official_checkpoint, unscale_channels)
from lang3d.render import render_views
from lang3d.tensorboard import log_image, log_point_cloud
from sepe.conditioned_model import SEPEConditionedModel
from sepe.fusion import ConcatFusion, CrossAttentionFusion
from sepe.geometric_losses import (chamfer_distance, color_loss, laplacian_smoothness, mean_neighbour_distance,
                                   uniformity)
from sepe.metrics import ChamferDistanceMetric, CLIPRPrecision, EarthMoversDistance, PointFID, PointIS
from sepe.pointcloud_features import load_feature_network

FUSIONS = ("concat", "cross_attention")
TRAINABLE = ("last_blocks", "lora")


def write_cloud(stem: Path, cloud: np.ndarray, prompt: str, formats=("ply", "npz")) -> list[Path]:
    """Write cloud [6,P] (xyz data units, RGB 0..255) as ``<stem>.ply`` (float x,y,z + uchar red,green,blue, as
    Point-E's ``write_ply``) and/or ``<stem>.npz`` (``coords`` float32 [P,3], ``colors`` uint8 [P,3], ``prompt``)."""
    xyz = cloud[:3].T.astype(np.float32)
    rgb = np.clip(np.round(cloud[3:].T), 0, 255).astype(np.uint8)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "ply":
            write_point_ply(path, xyz, rgb)
        elif fmt == "npz":
            with atomic_write(path) as f:
                np.savez(f, coords=xyz, colors=rgb, prompt=np.array(prompt))
        else:
            raise ValueError(f"unknown output format {fmt!r} (ply, npz)")
        written.append(path)
    return written


class SEPEFineTuning(FrozenWeightsNotSaved, L.LightningModule):
    """SEPE (paper Sec. 3): the fusion module + base40M's last blocks (or LoRA) trained on Cap3D triplets.

    Args:
        fusion: "concat" (Option A) or "cross_attention" (Option B; attends over the CLIP text token sequence).
        base_checkpoint: official ``base_40m.pt``, loaded strictly before any LoRA wrapping (None: random init).
        upsampler_checkpoint: official ``upsample_40m.pt`` (None: random init; frozen either way, never trained).
        clip_model / clip_pretrained: the frozen CLIP (paper: ViT-L-14 / openai); its grid sizes the models.
        model_overrides / upsampler_overrides: constructor overrides of ``build_model`` (tiny tests only).
        trainable: "last_blocks" (the last ``num_trainable_blocks`` transformer blocks) or "lora" (rank
            ``lora_rank``, ``lora_alpha`` on every block's attention / MLP Linear layers).
        fusion_lora_rank: LoRALinear rank of the concat MLP (paper: 8; None = plain Linear); fusion_heads: heads
            of the cross-attention; cond_drop_prob: classifier-free dropout of the (grid, text) pair.
        lr_fusion / lr_backbone / weight_decay: AdamW, two parameter groups ("fusion", "backbone").
        lambda_cd, lambda_color, lambda_smooth, lambda_uniform: weights of the geometric terms on x̂0;
            chamfer_squared, smooth_k, uniform_k, uniform_radius (data units; None = the target's mean k-NN spacing).
        geometric_max_t: the geometric terms are averaged over the samples with step t < geometric_max_t only
            (None: all). x̂0 = (x_t - sqrt(1-ᾱ) ε̂) / sqrt(ᾱ) is amplified up to ~1/sqrt(ᾱ_T) at the noisiest
            steps, where the geometric terms would be noise-dominated and swamp the diffusion loss (the paper
            does not say; 512 of 1024 steps is our default).
        train_output_head: also train ``ln_post`` + ``output_proj`` (backbone group). None = only without
            ``base_checkpoint``: a fresh Point-E model's ``output_proj`` is zero, which blocks every gradient to
            the blocks and the fusion, so a random-init run (tests, demo) must train it; with base40M weights the
            paper's recipe (last blocks / LoRA only) applies.
        xyz_scale: data xyz (unit sphere) -> Point-E units (see module docstring).
        base_points / upsample_points: points drawn by each sampling stage (0 upsample points: base stage only);
            sample_steps / guidance_scale / upsampler_guidance_scale: Karras steps and guidance of generation.
        val_sample_steps / val_num_samples: cheaper sampling of clouds logged at validation end.
        EMD compares the base stage's ``base_points`` with as many farthest-point samples of the ground truth
        (so data.num_points must be at least base_points).
        eval_feature_network: a PointNet++ classifier checkpoint (``python -m sepe.pointcloud_features``, trained on
            ModelNet40) for P-FID / P-IS in ``test``; None leaves them out. eval_num_distractors: captions drawn
            against the true one in CLIP R-precision (computed when more clouds than that are tested).
    """

    def __init__(self, fusion: str = "concat", base_checkpoint: str | None = None,
                 upsampler_checkpoint: str | None = None, clip_model: str = "ViT-L-14",
                 clip_pretrained: str | None = "openai", model_overrides: dict | None = None,
                 upsampler_overrides: dict | None = None, trainable: str = "last_blocks", num_trainable_blocks: int = 2,
                 lora_rank: int = 8, lora_alpha: float | None = 16.0, fusion_lora_rank: int | None = 8,
                 fusion_heads: int = 8, cond_drop_prob: float = 0.1, lr_fusion: float = 1e-4,
                 lr_backbone: float = 1e-5, weight_decay: float = 0.0, lambda_cd: float = 0.1,
                 lambda_color: float = 0.05, lambda_smooth: float = 0.01, lambda_uniform: float = 0.01,
                 chamfer_squared: bool = True, smooth_k: int = 8, uniform_k: int = 8,
                 uniform_radius: float | None = None,
                 geometric_max_t: int | None = 512, train_output_head: bool | None = None, xyz_scale: float = 0.5, base_points: int = 1024,
                 upsample_points: int = 3072, sample_steps: int = 64, guidance_scale: float = 3.0,
                 upsampler_guidance_scale: float = 3.0, val_sample_steps: int = 16, val_num_samples: int = 2,
                 eval_feature_network: str | None = None, eval_num_distractors: int = 31):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        self.save_hyperparameters()
        self.clip = CLIPConditioner.load(clip_model, clip_pretrained)
        grid = dict(grid_tokens=self.clip.grid_tokens, grid_width=self.clip.grid_width)
        base = build_model("base40M", **grid, **(model_overrides or {}))
        if base_checkpoint:
            load_official_checkpoint(base, base_checkpoint)   # strict, before LoRA wrapping
            rank_zero_info(f"SEPE: base40M weights from {base_checkpoint}")
        upsampler = build_model("upsample", **grid, **(upsampler_overrides or {})) if upsample_points else None
        if upsampler is not None and upsampler_checkpoint:
            load_official_checkpoint(upsampler, upsampler_checkpoint)
        if fusion == "concat":
            fuse = ConcatFusion(grid["grid_width"], self.clip.vector_width, base.width, base.width,
                                lora_rank=fusion_lora_rank, cond_drop_prob=cond_drop_prob)
        else:
            fuse = CrossAttentionFusion(grid["grid_width"], self.clip.vector_width, base.width, fusion_heads,
                                        cond_drop_prob=cond_drop_prob)
            fuse.load_point_e_clip_embed(base)
        base.requires_grad_(False)
        if trainable == "last_blocks":
            blocks = base.backbone.resblocks
            if not 0 < num_trainable_blocks <= len(blocks):
                raise ValueError(f"num_trainable_blocks must be in [1, {len(blocks)}], got {num_trainable_blocks}")
            for block in blocks[len(blocks) - num_trainable_blocks:]:
                block.requires_grad_(True)
        else:
            apply_lora(base.backbone, POINT_E_LORA_TARGETS, rank=lora_rank, alpha=lora_alpha)
        if train_output_head if train_output_head is not None else not base_checkpoint:
            base.ln_post.requires_grad_(True)
            base.output_proj.requires_grad_(True)
        self.net = SEPEConditionedModel(base, fuse)
        self.upsampler = None
        if upsampler is not None:
            self.upsampler = SEPEConditionedModel(upsampler.requires_grad_(False), fuse)
        # CLIP never goes into checkpoints; a file-loaded upsampler neither (it is re-read from its file).
        self.frozen_prefixes = ("clip.",) + (("upsampler.model.",) if upsampler_checkpoint else ())
        self.diffusion = GaussianDiffusion.from_schedule("cosine")
        self.upsampler_diffusion = GaussianDiffusion.from_schedule("linear")
        self._val_shown: dict | None = None
        self.test_chamfer = ChamferDistanceMetric(squared=chamfer_squared)
        self.test_emd = EarthMoversDistance(num_points=base_points)
        self.test_r_precision = CLIPRPrecision(self.clip.model, self.clip.tokenizer, num_distractors=eval_num_distractors)
        self.test_fid = self.test_is = None
        if eval_feature_network:
            network = load_feature_network(eval_feature_network)
            self.test_fid, self.test_is = PointFID(network), PointIS(network)

    # ---------------------------------------------------------------- inputs
    @torch.no_grad()
    def condition(self, captions: list[str], images) -> dict[str, torch.Tensor]:
        """Frozen-CLIP condition for captions (B strings) and images (uint8 [B,H,W,3] tensor or B arrays / PIL
        images): ``grid`` [B,T,grid_width] and ``text_vector`` [B,D] or ``text_tokens`` [B,L,D] + ``text_mask``."""
        if torch.is_tensor(images):
            images = list(images.cpu().numpy())
        if len(images) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(images)} images")
        cond = {"grid": self.clip.embed_images_grid(images)}
        if self.net.uses_tokens:
            cond["text_tokens"], cond["text_mask"] = self.clip.embed_text_tokens(captions)
        else:
            cond["text_vector"] = self.clip.embed_text(captions)
        return cond

    def batch_cloud(self, batch: dict) -> torch.Tensor:
        """Cap3D batch (points [B,N,3] unit sphere, colors [B,N,3] 0..1) -> Point-E cloud [B,6,N] (xyz × xyz_scale,
        RGB × 255)."""
        if "points" not in batch:
            raise ValueError(f"batch holds no samples (all skipped: {dict(batch.get('skipped', {}))})")
        xyz = batch["points"].float() * self.hparams.xyz_scale
        return torch.cat([xyz, batch["colors"].float() * 255.0], dim=-1).transpose(1, 2).contiguous()

    # ---------------------------------------------------------------- losses
    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms (batch means; geometric ones over t < geometric_max_t) from one model call: diffusion (mse + vb), chamfer, color, smooth,
        uniform, and their weighted sum ``loss``."""
        hp = self.hparams
        x0 = self.batch_cloud(batch)
        cond = self.condition(batch["caption"], batch["image"])
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        out = self.diffusion.training_losses(self.net, x0, t, cond, noise)
        pred = unscale_channels(out["pred_xstart"])            # x̂0 of the same call, data units
        radius = hp.uniform_radius if hp.uniform_radius is not None else mean_neighbour_distance(x0, hp.uniform_k)
        keep = torch.ones_like(t, dtype=torch.bool) if hp.geometric_max_t is None else t < hp.geometric_max_t
        weights = keep.float() / keep.float().sum().clamp(min=1.0)     # mean over kept samples (0 if none)
        terms = {"diffusion": out["loss"].mean(), "mse": out["mse"].mean(), "vb": out["vb"].mean(),
                 "chamfer": (weights * chamfer_distance(pred, x0, squared=hp.chamfer_squared)).sum(),
                 "color": (weights * color_loss(pred, x0)).sum(),
                 "smooth": (weights * laplacian_smoothness(pred, hp.smooth_k)).sum(),
                 "uniform": (weights * uniformity(pred, radius, hp.uniform_k)).sum()}
        terms["loss"] = (terms["diffusion"] + hp.lambda_cd * terms["chamfer"] + hp.lambda_color * terms["color"]
                         + hp.lambda_smooth * terms["smooth"] + hp.lambda_uniform * terms["uniform"])
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        b = len(batch["caption"])
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, batch_size=b)
        self.log("train_loss", terms["loss"], prog_bar=True, logger=False, batch_size=b)
        if skipped := sum(batch.get("skipped", {}).values()):
            self.log("train/skipped_samples", float(skipped), reduce_fx="sum", batch_size=b)
        return terms["loss"]

    def batch_generator(self, batch: dict) -> torch.Generator:
        """Generator seeded by the batch's object uids: the same t and noise every epoch, different ones on every
        DDP rank, and the same scores for a checkpoint on any number of processes (at batch size 1)."""
        return torch.Generator(self.device).manual_seed(seed_from_names(batch["uid"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self.losses(batch, self.batch_generator(batch))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch["caption"]), sync_dist=True)
        if batch_idx == 0:
            n = self.hparams.val_num_samples
            self._val_shown = {"caption": batch["caption"][:n], "image": batch["image"][:n],
                               "target": self.batch_cloud(batch)[:n]}

    # ---------------------------------------------------------------- generation
    def sampler(self, steps: int | None = None, guidance_scale: float | None = None,
                upsampler_guidance_scale: float | None = None) -> PointCloudSampler:
        """Two-stage sampler (base then upsampler; base only when ``upsample_points`` is 0), Point-E's σ settings;
        unset arguments take the module's ``sample_steps`` / guidance defaults."""
        hp = self.hparams
        steps = steps or hp.sample_steps
        guidance = hp.guidance_scale if guidance_scale is None else guidance_scale
        up_guidance = hp.upsampler_guidance_scale if upsampler_guidance_scale is None else upsampler_guidance_scale
        models, diffusions = [self.net], [self.diffusion]
        stages = [StageConfig(hp.base_points, guidance, steps, sigma_max=120.0, s_churn=3.0)]
        if self.upsampler is not None:
            models.append(self.upsampler)
            diffusions.append(self.upsampler_diffusion)
            stages.append(StageConfig(hp.upsample_points, up_guidance, steps, sigma_max=160.0))
        return PointCloudSampler(models, diffusions, stages)

    @torch.no_grad()
    def generate(self, prompts: list[str], images, steps: int | None = None, generator: torch.Generator | None = None,
                 guidance_scale: float | None = None, upsampler_guidance_scale: float | None = None) -> torch.Tensor:
        """Clouds [B,6,P] (xyz data units, RGB 0..255) for B prompts and images; the module must be in eval mode."""
        sampler = self.sampler(steps, guidance_scale, upsampler_guidance_scale)
        return sampler.sample(len(prompts), self.condition(prompts, images), generator)

    def on_validation_epoch_end(self) -> None:
        shown, self._val_shown = self._val_shown, None
        if shown is None or self.trainer.sanity_checking or self.global_rank != 0:
            return  # rank 0 samples its first batch's objects and logs them (the loggers write from rank 0)
        generator = torch.Generator(self.device).manual_seed(0)
        clouds = self.generate(shown["caption"], shown["image"], self.hparams.val_sample_steps, generator)
        base = clouds[:, :, :self.hparams.base_points]
        self.log("val/sample_chamfer", chamfer_distance(base, shown["target"]).mean(), rank_zero_only=True)
        emd = EarthMoversDistance(num_points=min(base.shape[-1], shown["target"].shape[-1]),  # FPS to equal counts
                                  sync_on_compute=False)
        emd.update(base.cpu(), shown["target"].cpu())
        self.log("val/sample_emd", emd.compute(), rank_zero_only=True)
        renders = render_views(clouds[:, :3].transpose(1, 2), clouds[:, 3:].transpose(1, 2) / 255.0, image_size=128)
        step = self.global_step
        for i, (caption, image, cloud) in enumerate(zip(shown["caption"], shown["image"], clouds.cpu().numpy())):
            colors = np.clip(np.round(cloud[3:].T), 0, 255).astype(np.uint8)
            log_point_cloud(self.logger, f"val/generated_{i}", cloud[:3].T, colors, step)
            log_image(self.logger, f"val/condition_image_{i}", np.asarray(image.cpu()), step)
            views = (renders[i].permute(2, 0, 3, 1).reshape(renders.shape[-2], -1, 3) * 255).round()
            log_image(self.logger, f"val/generated_render_{i}", views.byte().cpu().numpy(), step)
            experiment = getattr(self.logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text(f"val/prompt_{i}", caption, step)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Generate a cloud for every held-out (caption, image) and score it against the object's cloud:
        Chamfer, EMD (base stage vs ground truth), CLIP R-precision, and P-FID / P-IS with a feature network."""
        clouds = self.generate(batch["caption"], batch["image"], None, self.batch_generator(batch))
        base, target = clouds[:, :, :self.hparams.base_points], self.batch_cloud(batch)
        self.test_chamfer.update(base, target)
        self.test_emd.update(base, target)
        self.test_r_precision.update(clouds, batch["caption"])
        if self.test_fid is not None:
            self.test_fid.update(target, real=True)
            self.test_fid.update(clouds)
            self.test_is.update(clouds)

    def on_test_epoch_end(self) -> None:
        scores = {"test/chamfer": self.test_chamfer.compute(), "test/emd": self.test_emd.compute()}
        try:
            scores["test/clip_r_precision"] = self.test_r_precision.compute()
        except ValueError as err:  # fewer tested clouds than distractors + 1
            rank_zero_info(f"SEPE test: CLIP R-precision not reported: {err}")
        if self.test_fid is not None:
            scores["test/p_fid"] = self.test_fid.compute()
            scores["test/p_is"] = self.test_is.compute()[0]
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in scores.items()})
        for metric in (self.test_chamfer, self.test_emd, self.test_r_precision, self.test_fid, self.test_is):
            if metric is not None:
                metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Batch of ``SEPEPromptsDataModule``, which also says how to sample and where to write (so that a
        checkpoint's hyper-parameters cannot override the request): writes ``<output_dir>/<name>.ply|.npz`` per
        prompt; returns {"name", "prompt", "clouds" [B,6,P], "files"}."""
        request = self.trainer.datamodule
        clouds = self.generate(batch["prompt"], batch["image"], request.steps, None, request.guidance_scale,
                               request.upsampler_guidance_scale)
        out_dir = Path(request.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [write_cloud(out_dir / name, cloud, prompt, request.formats)
                 for name, prompt, cloud in zip(batch["name"], batch["prompt"], clouds.cpu().numpy())]
        return {"name": batch["name"], "prompt": batch["prompt"], "clouds": clouds, "files": files}

    # ---------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict]:
        """AdamW groups: "fusion" (lr_fusion) and "backbone" (lr_backbone: unfrozen blocks or LoRA tensors)."""
        fusion = [p for p in self.net.fusion.parameters() if p.requires_grad]
        backbone = [p for p in self.net.model.parameters() if p.requires_grad]
        hp = self.hparams
        return [{"params": fusion, "lr": hp.lr_fusion, "name": "fusion"},
                {"params": backbone, "lr": hp.lr_backbone, "name": "backbone"}]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameter_groups(), weight_decay=self.hparams.weight_decay)


"""SEPE fine-tuning of Point-E base40M with fused CLIP text + image conditioning, and two-stage generation.

One diffusion definition everywhere (Point-E's: cosine base / linear upsampler schedules, channel scaling inside
``GaussianDiffusion``). Each training step makes ONE base-model call: the diffusion loss and the geometric losses
on x̂0 (``pred_xstart`` of that same call) share it.

Data units: Cap3D's clouds are already in Point-E's units (xyz about ±0.5, the units Cap3D's own Point-E
fine-tuning feeds unchanged), and ``Cap3DDataModule`` serves them unchanged by default, with colours in 0..1.
``batch_cloud`` multiplies xyz by ``xyz_scale`` (1.0; another constant only for clouds whose units differ from Point-E's
by one) and colours by 255 (Point-E's RGB 0..255). Clouds normalised into the unit sphere (``normalize: true``) are
refused: no constant maps them onto Point-E's box, their size relative to it depends on their shape.

Stage 2 (upsampler, 1024 -> 4096 points): ``upsampler_conditioning="image_grid"`` (default, Point-E's) keeps the
released upsampler frozen and gives it the condition it was trained with, its own ``clip_embed`` of the CLIP image
grid; ``"fused"`` fine-tunes it too, with its own fusion warm-started from its own ``clip_embed``, on its own
(linear) schedule: the first ``base_points`` served points (farthest-point order) are its ``low_res`` and the next
``upsample_points`` its target.

Randomness of training (timesteps, noise, condition dropout) comes from a generator seeded by (``seed``, global
step, micro-batch, DDP rank), so the ranks draw different noise and a resumed run draws the same; evaluation draws
follow the batch's object uids.

Under DDP a batch may hold no object on some ranks: every object of it skipped (an unreadable cloud), or, in
evaluation, an empty shard (fewer objects than ranks). Training takes the steps of ``lang3d.training.empty_steps``;
validation losses are per-object means over all ranks (``lang3d.training.sample_means``), to which a rank without
objects adds nothing; a rank without test objects scores none and joins the gathers of the test metrics.
"""
from __future__ import annotations

import hashlib

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lang3d.data.sampling import seed_from_names
from lang3d.models.clip import load_clip
from lang3d.models.lora import POINT_E_LORA_TARGETS, apply_lora
from lang3d.models.point_e import (CLIPConditioner, GaussianDiffusion, PointCloudSampler, StageConfig, build_model,
                                   load_official_checkpoint, unscale_channels)
from lang3d.training.attached import attached_trainer
from lang3d.training.checkpoint import keep_out_of_state_dict
from lang3d.training.distributed import row_counts, share_list_state_layouts
from lang3d.training.empty_steps import EmptyStepsMixin
from lang3d.training.sample_means import SampleMeans
from lang3d.visual.render import render_views
from lang3d.visual.tensorboard import log_image, log_point_cloud
from sepe.conditioned_model import SEPEConditionedModel
from sepe.fusion import ConcatFusion, CrossAttentionFusion, drop_conditions
from sepe.geometric_losses import (chamfer_distance, color_loss, laplacian_smoothness, mean_neighbour_distance,
                                   uniformity)
from sepe.metrics import ChamferDistanceMetric, CLIPRPrecision, EarthMoversDistance, PointFID, PointIS
from sepe.pointcloud_features import load_feature_network

LOSS_TERMS = ("loss", "diffusion", "mse", "vb", "chamfer", "color", "smooth", "uniform")
"""The loss terms of every SEPE step (``SEPEFineTuning.losses``); a fused upsampler adds "upsampler_diffusion"."""
FUSIONS = ("concat", "cross_attention")
TRAINABLE = ("last_blocks", "lora")
UPSAMPLER_CONDITIONING = ("image_grid", "fused")


def step_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """63-bit seed of one training step's draws: sha256 of (seed, global step, micro-batch within gradient
    accumulation, DDP rank). Reproducible, and different on every rank."""
    digest = hashlib.sha256(f"sepe-train/{seed}/{step}/{micro_batch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def make_trainable(model: nn.Module, trainable: str, num_blocks: int, lora_rank: int, lora_alpha: float | None,
                   output_head: bool) -> None:
    """Freeze a Point-E model, then unfreeze its last ``num_blocks`` transformer blocks ("last_blocks") or wrap its
    blocks' Linear layers in LoRA ("lora"); ``output_head`` also trains ``ln_post`` + ``output_proj``."""
    model.requires_grad_(False)
    if trainable == "last_blocks":
        blocks = model.backbone.resblocks
        if not 0 < num_blocks <= len(blocks):
            raise ValueError(f"num_trainable_blocks must be in [1, {len(blocks)}], got {num_blocks}")
        for block in blocks[len(blocks) - num_blocks:]:
            block.requires_grad_(True)
    else:
        apply_lora(model.backbone, POINT_E_LORA_TARGETS, rank=lora_rank, alpha=lora_alpha)
    if output_head:
        model.ln_post.requires_grad_(True)
        model.output_proj.requires_grad_(True)


class SEPEFineTuning(EmptyStepsMixin, L.LightningModule):
    """SEPE (paper Sec. 3): the fusion module + base40M's last blocks (or LoRA) trained on Cap3D triplets.

    Args:
        fusion: "concat" (Option A) or "cross_attention" (Option B; attends over the CLIP text token sequence).
            Either is base40M's ``clip_embed(grid)`` plus a text-driven update that is zero at initialisation,
            so step 0 is exactly base40M given the same image grid.
        base_checkpoint: official ``base_40m.pt``, loaded strictly before any LoRA wrapping (None: random init).
        upsampler_checkpoint: official ``upsample_40m.pt`` (None: random init).
        upsampler_conditioning: "image_grid" (default, as Point-E: the frozen upsampler conditioned on its own
            ``clip_embed`` of the image grid) or "fused" (the upsampler fine-tuned as well, with its own fusion
            warm-started from its own ``clip_embed``, trainable parts as for the base model, its diffusion loss on
            the served points ``base_points:base_points+upsample_points`` given the first ``base_points`` as
            ``low_res``; data.num_points must be at least base_points + upsample_points).
        clip_model / clip_pretrained: the frozen conditioning CLIP (paper: ViT-L-14 / openai); its grid sizes the
            models.
        model_overrides / upsampler_overrides: constructor overrides of ``build_model`` (tiny tests only).
        trainable: "last_blocks" (the last ``num_trainable_blocks`` transformer blocks) or "lora" (rank
            ``lora_rank``, ``lora_alpha`` on every block's attention / MLP Linear layers).
        fusion_lora_rank: the fusion's copy of ``clip_embed`` is a LoRALinear of this rank (paper: LoRALinear in
            the fusion, rank 8; None = the copy is trained in full); fusion_heads: heads of the cross-attention.
        cond_drop_prob: classifier-free dropout of a sample's conditions (grid and text together; a fused
            upsampler's ``low_res`` too, as its unconditional sampling branch zeroes it).
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
        xyz_scale: served xyz -> Point-E units (1.0: Cap3D's own units, the data module's default; the data module's
            ``normalize: true`` is refused, see ``setup``).
        base_points / upsample_points: points drawn by each sampling stage (0 upsample points: base stage only);
            the base model trains on the first ``base_points`` served points. sample_steps / guidance_scale /
            upsampler_guidance_scale: Karras steps and guidance of generation.
        val_sample_steps / val_num_samples: cheaper sampling of clouds logged at validation end.
        seed: seed of the training draws (with the step and the DDP rank, ``step_seed``).
        EMD compares the base stage's ``base_points`` with as many farthest-point samples of the ground truth.
        eval_clip_model / eval_clip_pretrained: the CLIP of the reported R-precision (``test/clip_r_precision``;
            Point-E's paper: ViT-B-32 / openai), independent of the conditioning CLIP, which gives a second column
            (``test/clip_r_precision_cond_clip``); loaded when testing starts. eval_num_distractors: captions drawn
            against the true one (computed when more clouds than that are tested).
        eval_feature_network: point-e's ``pointnet.pt`` (P-FID / P-IS comparable with published numbers) or a
            checkpoint of the same network trained by ``python -m sepe.pointcloud_features`` on ModelNet40, for
            P-FID / P-IS in ``test`` (computed as point-e does; references subsampled to the generated clouds'
            base_points + upsample_points); None leaves them out.
    """

    def __init__(self, fusion: str = "concat", base_checkpoint: str | None = None,
                 upsampler_checkpoint: str | None = None, upsampler_conditioning: str = "image_grid",
                 clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai",
                 model_overrides: dict | None = None, upsampler_overrides: dict | None = None,
                 trainable: str = "last_blocks", num_trainable_blocks: int = 2, lora_rank: int = 8,
                 lora_alpha: float | None = 16.0, fusion_lora_rank: int | None = 8, fusion_heads: int = 8,
                 cond_drop_prob: float = 0.1, lr_fusion: float = 1e-4, lr_backbone: float = 1e-5,
                 weight_decay: float = 0.0, lambda_cd: float = 0.1, lambda_color: float = 0.05,
                 lambda_smooth: float = 0.01, lambda_uniform: float = 0.01, chamfer_squared: bool = True,
                 smooth_k: int = 8, uniform_k: int = 8, uniform_radius: float | None = None,
                 geometric_max_t: int | None = 512, train_output_head: bool | None = None, xyz_scale: float = 1.0,
                 base_points: int = 1024, upsample_points: int = 3072, sample_steps: int = 64,
                 guidance_scale: float = 3.0, upsampler_guidance_scale: float = 3.0, val_sample_steps: int = 16,
                 val_num_samples: int = 2, seed: int = 0, eval_clip_model: str | None = "ViT-B-32",
                 eval_clip_pretrained: str | None = "openai", eval_feature_network: str | None = None,
                 eval_num_distractors: int = 31):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        if upsampler_conditioning not in UPSAMPLER_CONDITIONING:
            raise ValueError(f"upsampler_conditioning must be one of {UPSAMPLER_CONDITIONING}, got "
                             f"{upsampler_conditioning!r}")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
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
        train_head = train_output_head if train_output_head is not None else not base_checkpoint
        self.net = SEPEConditionedModel(base, self._fusion_for(base))
        make_trainable(base, trainable, num_trainable_blocks, lora_rank, lora_alpha, train_head)
        self.upsampler: nn.Module | None = None
        self.fused_upsampler = upsampler is not None and upsampler_conditioning == "fused"
        if self.fused_upsampler:
            self.upsampler = SEPEConditionedModel(upsampler, self._fusion_for(upsampler))
            up_head = train_output_head if train_output_head is not None else not upsampler_checkpoint
            make_trainable(upsampler, trainable, num_trainable_blocks, lora_rank, lora_alpha, up_head)
        elif upsampler is not None:
            self.upsampler = upsampler.requires_grad_(False)   # Point-E's stage 2 as released
        # CLIP never goes into checkpoints (FrozenPretrained); a frozen file-loaded upsampler neither (it is re-read
        # from its file).
        if upsampler is not None and not self.fused_upsampler and upsampler_checkpoint:
            keep_out_of_state_dict(self.upsampler)
        self.diffusion = GaussianDiffusion.from_schedule("cosine")
        self.upsampler_diffusion = GaussianDiffusion.from_schedule("linear")
        self._val_shown: dict | None = None
        self.val_losses = SampleMeans(self.loss_names())   # per-object means over every rank's objects
        self._test_objects = 0   # objects tested on this rank in the running test epoch
        self.test_chamfer = ChamferDistanceMetric(squared=chamfer_squared)
        self.test_emd = EarthMoversDistance(num_points=base_points)
        self.test_r_precision: CLIPRPrecision | None = None        # built in setup("test"): loads the eval CLIP
        self.test_r_precision_cond: CLIPRPrecision | None = None
        self.test_fid = self.test_is = None
        if eval_feature_network:
            network = load_feature_network(eval_feature_network)
            points = base_points + upsample_points   # per generated cloud; references are subsampled to as many
            self.test_fid, self.test_is = PointFID(network, num_points=points), PointIS(network, num_points=points)

    def _fusion_for(self, model) -> ConcatFusion | CrossAttentionFusion:
        """A fusion for ``model`` (base40M or the upsampler), warm-started from the model's own ``clip_embed``."""
        hp = self.hparams
        if hp.fusion == "concat":
            fuse = ConcatFusion(model.grid_width, self.clip.vector_width, model.width, model.width,
                                lora_rank=hp.fusion_lora_rank)
        else:
            fuse = CrossAttentionFusion(model.grid_width, self.clip.vector_width, model.width, hp.fusion_heads,
                                        lora_rank=hp.fusion_lora_rank)
        fuse.load_point_e_clip_embed(model)
        return fuse

    def setup(self, stage: str) -> None:
        """Every stage: refuses a datamodule that normalises clouds into the unit sphere (``hparams.normalize``).
        Testing: the R-precision metrics, with the independent evaluation CLIP and the conditioning CLIP."""
        datamodule = self.trainer.datamodule
        if datamodule is not None and getattr(datamodule, "hparams", {}).get("normalize"):
            raise ValueError(f"{type(datamodule).__name__}(normalize=True) serves each cloud centred and scaled into "
                             "the unit sphere, but SEPE trains and samples in Point-E's units, a box about 1 wide, "
                             "in which Cap3D's clouds already are: set data.normalize false (no constant xyz_scale "
                             "maps the unit sphere onto the box: each object's size would then depend on its shape)")
        if stage != "test" or self.test_r_precision_cond is not None:
            return
        hp = self.hparams
        self.test_r_precision_cond = CLIPRPrecision(self.clip.model, self.clip.tokenizer,
                                                    num_distractors=hp.eval_num_distractors)
        if hp.eval_clip_model is not None:
            model, tokenizer = load_clip(hp.eval_clip_model, hp.eval_clip_pretrained)
            self.test_r_precision = CLIPRPrecision(model.to(self.device), tokenizer,
                                                   num_distractors=hp.eval_num_distractors)

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
        """Cap3D batch (points [B,N,3] Cap3D's units, colors [B,N,3] 0..1) -> Point-E cloud [B,6,N] (xyz ×
        xyz_scale, RGB × 255)."""
        if "points" not in batch:
            raise ValueError(f"batch holds no samples (all skipped: {dict(batch.get('skipped', {}))})")
        xyz = batch["points"].float() * self.hparams.xyz_scale
        return torch.cat([xyz, batch["colors"].float() * 255.0], dim=-1).transpose(1, 2).contiguous()

    def split_cloud(self, cloud: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Served cloud [B,6,N] -> (base target [B,6,base_points]: its first points, upsampler target
        [B,6,upsample_points]: the next ones, or None unless the upsampler is fused)."""
        hp = self.hparams
        need = hp.base_points + (hp.upsample_points if self.fused_upsampler else 0)
        if cloud.shape[-1] < need:
            raise ValueError(f"SEPE trains on {need} points per object (base_points {hp.base_points}"
                             + (f" + upsample_points {hp.upsample_points} of the fused upsampler"
                                if self.fused_upsampler else "") + f"); the data serves {cloud.shape[-1]}: raise "
                             f"data.num_points")
        upsample = cloud[:, :, hp.base_points:need] if self.fused_upsampler else None
        return cloud[:, :, :hp.base_points], upsample

    # ---------------------------------------------------------------- losses
    def loss_names(self) -> tuple[str, ...]:
        """The keys of ``losses``: ``LOSS_TERMS``, and "upsampler_diffusion" with a fused upsampler."""
        return LOSS_TERMS + (("upsampler_diffusion",) if self.fused_upsampler else ())

    def samples_in_batch(self, batch: dict) -> int:
        return len(batch["caption"]) if "points" in batch else 0   # a batch of skipped samples holds no points

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """All loss terms (batch means; geometric ones over t < geometric_max_t) from one base-model call:
        diffusion (mse + vb), chamfer, color, smooth, uniform, with a fused upsampler its ``upsampler_diffusion``,
        and their weighted sum ``loss`` (the keys of ``loss_names``). Timesteps, noise and condition dropout are
        drawn from ``generator``."""
        hp = self.hparams
        x0, x0_up = self.split_cloud(self.batch_cloud(batch))
        cond = self.condition(batch["caption"], batch["image"])
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        kwargs = drop_conditions(cond, hp.cond_drop_prob if self.training else 0.0, generator)
        out = self.diffusion.training_losses(self.net, x0, t, kwargs, noise)
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
        if x0_up is not None:
            t_up = self.upsampler_diffusion.sample_timesteps(x0.shape[0], x0.device, generator)
            noise_up = torch.randn(x0_up.shape, device=x0.device, generator=generator)
            kwargs_up = drop_conditions({**cond, "low_res": x0}, hp.cond_drop_prob if self.training else 0.0,
                                        generator)
            out_up = self.upsampler_diffusion.training_losses(self.upsampler, x0_up, t_up, kwargs_up, noise_up)
            terms["upsampler_diffusion"] = out_up["loss"].mean()
            terms["loss"] = terms["loss"] + terms["upsampler_diffusion"]
        return terms

    def step_generator(self, batch_idx: int) -> torch.Generator:
        """The training step's generator, seeded by (seed, global step, micro-batch, rank): ``step_seed``."""
        accumulate = trainer.accumulate_grad_batches if (trainer := attached_trainer(self)) is not None else 1
        seed = step_seed(self.hparams.seed, self.global_step, batch_idx % accumulate, self.global_rank)
        return torch.Generator(self.device).manual_seed(seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if skipped := sum(batch.get("skipped", {}).values()):
            self.log("train/skipped_samples", float(skipped), reduce_fx="sum", batch_size=1)
        if self.samples_on_all_ranks(batch) == 0:
            return self.zero_weight_loss()  # every rank's samples were skipped: no update (lang3d.training.empty_steps)
        b = self.samples_in_batch(batch)
        if b == 0:  # this rank's samples were all skipped, other ranks' were not: zero gradients into DDP's
            return self.zero_weight_loss()  # all-reduce, the step's only collective (no BatchNorm, no gathered loss)
        terms = self.losses(batch, self.step_generator(batch_idx))
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, batch_size=b)
        self.log("train_loss", terms["loss"], prog_bar=True, logger=False, batch_size=b)
        return terms["loss"]

    def batch_generator(self, batch: dict) -> torch.Generator:
        """Generator seeded by the batch's object uids: the same t and noise every epoch, different ones on every
        DDP rank, and the same scores for a checkpoint on any number of processes (at batch size 1)."""
        return torch.Generator(self.device).manual_seed(seed_from_names(batch["uid"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        b = self.samples_in_batch(batch)
        if b == 0:   # an empty shard's batch, or every object skipped: nothing to add to the means over all ranks
            return
        self.val_losses.update(self.losses(batch, self.batch_generator(batch)), b)
        if batch_idx == 0:
            n = self.hparams.val_num_samples
            self._val_shown = {"caption": batch["caption"][:n], "image": batch["image"][:n],
                               "target": self.batch_cloud(batch)[:n]}

    # ---------------------------------------------------------------- generation
    def sampler(self, steps: int | None = None, guidance_scale: float | None = None,
                upsampler_guidance_scale: float | None = None) -> PointCloudSampler:
        """Two-stage sampler (base then upsampler; base only when ``upsample_points`` is 0), Point-E's σ settings;
        unset arguments take the module's ``sample_steps`` / guidance defaults. Stage 2 is Point-E's upsampler given
        the image grid only (``upsampler_conditioning="image_grid"``), or the fused upsampler given every condition."""
        hp = self.hparams
        steps = steps or hp.sample_steps
        guidance = hp.guidance_scale if guidance_scale is None else guidance_scale
        up_guidance = hp.upsampler_guidance_scale if upsampler_guidance_scale is None else upsampler_guidance_scale
        models, diffusions = [self.net], [self.diffusion]
        stages = [StageConfig(hp.base_points, guidance, steps, sigma_max=120.0, s_churn=3.0)]
        if self.upsampler is not None:
            models.append(self.upsampler)
            diffusions.append(self.upsampler_diffusion)
            stages.append(StageConfig(hp.upsample_points, up_guidance, steps, sigma_max=160.0,
                                      cond_keys=None if self.fused_upsampler else ("grid",)))
        return PointCloudSampler(models, diffusions, stages)

    @torch.no_grad()
    def generate(self, prompts: list[str], images, steps: int | None = None, generator: torch.Generator | None = None,
                 guidance_scale: float | None = None, upsampler_guidance_scale: float | None = None) -> torch.Tensor:
        """Clouds [B,6,P] (xyz data units, RGB 0..255) for B prompts and images; the module must be in eval mode."""
        sampler = self.sampler(steps, guidance_scale, upsampler_guidance_scale)
        return sampler.sample(len(prompts), self.condition(prompts, images), generator)

    def on_validation_epoch_end(self) -> None:
        if self.val_losses.log(self, "val/") == 0:   # a collective: every rank gets here
            raise ValueError("SEPE validation: no object to validate on any process (the validation split is empty "
                             "or every object of it was skipped); fix the data or disable validation with "
                             "--trainer.limit_val_batches 0")
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
        Chamfer, EMD (base stage vs ground truth), CLIP R-precision (evaluation CLIP and conditioning CLIP), and
        P-FID / P-IS with a feature network."""
        b = self.samples_in_batch(batch)
        self._test_objects += b
        if b == 0:   # an empty shard's batch, or every object skipped: nothing to score on this rank
            return
        clouds = self.generate(batch["caption"], batch["image"], None, self.batch_generator(batch))
        base, target = clouds[:, :, :self.hparams.base_points], self.batch_cloud(batch)
        self.test_chamfer.update(base, target)
        self.test_emd.update(base, target)
        for metric in (self.test_r_precision, self.test_r_precision_cond):
            if metric is not None:
                metric.update(clouds, batch["caption"], batch["uid"])
        if self.test_fid is not None:
            self.test_fid.update(target, real=True)
            self.test_fid.update(clouds)
            self.test_is.update(clouds)

    def on_test_epoch_end(self) -> None:
        objects, self._test_objects = self._test_objects, 0
        objects = sum(row_counts(objects, self.device))   # a collective: every rank gets here
        if objects == 0:
            raise ValueError("SEPE test: no object to test on any process (the test split is empty or every object "
                             "of it was skipped); fix the data")
        metrics = (self.test_chamfer, self.test_emd, self.test_r_precision, self.test_r_precision_cond,
                   self.test_fid, self.test_is)
        for metric in metrics:   # a rank without objects holds empty lists: give them the other ranks' layout
            if metric is not None:
                share_list_state_layouts(metric)
        scores = {"test/chamfer": self.test_chamfer.compute(), "test/emd": self.test_emd.compute()}
        for key, metric in (("test/clip_r_precision", self.test_r_precision),
                            ("test/clip_r_precision_cond_clip", self.test_r_precision_cond)):
            if metric is None:
                continue
            if objects <= metric.num_distractors:   # asked before computing: a compute that raises under DDP
                rank_zero_info(f"SEPE test: {key} not reported: {objects} tested clouds, it needs more than its "
                               f"{metric.num_distractors} distractors")   # leaves the metric unresettable
                continue
            scores[key] = metric.compute()
        if self.test_fid is not None:
            scores["test/p_fid"] = self.test_fid.compute()
            scores["test/p_is"] = self.test_is.compute()[0]
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in scores.items()})
        for metric in metrics:
            if metric is not None:
                metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Batch of ``SEPEPromptsDataModule``, whose ``sampling`` says how to sample (so that a checkpoint's
        hyper-parameters cannot override the request); returns {"name", "prompt", "clouds" [B,6,P]}, which
        ``sepe.writers.GeneratedCloudWriter`` writes."""
        request = batch["sampling"]
        clouds = self.generate(batch["prompt"], batch["image"], request["steps"], None, request["guidance_scale"],
                               request["upsampler_guidance_scale"])
        return {"name": batch["name"], "prompt": batch["prompt"], "clouds": clouds}

    # ---------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict]:
        """AdamW groups: "fusion" (lr_fusion: the fusion, and a fused upsampler's) and "backbone" (lr_backbone:
        unfrozen blocks or LoRA tensors, and the output head when trained, of base40M and a fused upsampler)."""
        fused = [self.net] + ([self.upsampler] if self.fused_upsampler else [])
        fusion = [p for m in fused for p in m.fusion.parameters() if p.requires_grad]
        backbone = [p for m in fused for p in m.model.parameters() if p.requires_grad]
        hp = self.hparams
        return [{"params": fusion, "lr": hp.lr_fusion, "name": "fusion"},
                {"params": backbone, "lr": hp.lr_backbone, "name": "backbone"}]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameter_groups(), weight_decay=self.hparams.weight_decay)


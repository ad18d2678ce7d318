"""Point-E's multi-stage point-cloud sampler: a base model (1024 points) then an upsampler (3072 more points
conditioned on the first 1024), each sampled with the Karras Heun sampler and classifier-free guidance.

Behaviour follows openai/point-e `point_e/diffusion/sampler.py` (Karras path). Stage outputs are x̂_0 of the
last step, unscaled (xyz + RGB 0..255); a later stage receives the previous points as the `low_res`
conditioning tensor [B, 6, M], unscaled as in the reference (the upsampler applies its own channel scaling),
and its output is that prefix followed by the new points.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
from torch import nn

from lang3d.models.point_e.diffusion import NUM_CHANNELS, GaussianDiffusion, unscale_channels
from lang3d.models.point_e.karras import karras_sample_progressive


@dataclass(frozen=True)
class StageConfig:
    """One sampling stage.

    num_points: new points this stage draws. guidance_scale: classifier-free guidance s (0 or 1: none).
    steps, sigma_min, sigma_max, rho: Karras σ schedule. s_churn, s_tmin, s_tmax, s_noise: Heun churn.
    cond_keys: which `model_kwargs` the stage's model receives (None: all; `low_res` is added for later stages).
    """

    num_points: int
    guidance_scale: float = 3.0
    steps: int = 64
    sigma_min: float = 1e-3
    sigma_max: float = 120.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    cond_keys: tuple[str, ...] | None = None


BASE_STAGE = StageConfig(num_points=1024, guidance_scale=3.0, sigma_max=120.0, s_churn=3.0)
UPSAMPLE_STAGE = StageConfig(num_points=3072, guidance_scale=3.0, sigma_max=160.0, s_churn=0.0)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


class PointCloudSampler:
    """Samples [B, 6, Σ num_points] clouds through `models[i]` / `diffusions[i]` / `stages[i]` in order.

    Each model: `model(x [B,6,N] model space, t int64 [B], **cond) -> [B, 12, N]`, in eval mode.
    """

    def __init__(self, models: Sequence[nn.Module], diffusions: Sequence[GaussianDiffusion],
                 stages: Sequence[StageConfig], clip_denoised: bool = True):
        if not len(models) == len(diffusions) == len(stages) or not models:
            raise ValueError(f"need one diffusion and one StageConfig per model, got {len(models)} models, "
                             f"{len(diffusions)} diffusions, {len(stages)} stages")
        self.models = list(models)
        self.diffusions = list(diffusions)
        self.stages = list(stages)
        self.clip_denoised = clip_denoised

    @classmethod
    def point_e(cls, base_model: nn.Module, upsampler: nn.Module, text_vector: bool = False) -> PointCloudSampler:
        """Point-E's defaults: cosine base stage (1024 points, σ_max 120, churn 3), linear upsampler stage
        (3072 points, σ_max 160, churn 0), 64 steps, σ_min 1e-3, ρ 7, guidance 3 / 3; for the text-vector
        base model, guidance 3 / 0 with the upsampler conditioned on `low_res` only."""
        upsample = UPSAMPLE_STAGE
        if text_vector:
            upsample = replace(UPSAMPLE_STAGE, guidance_scale=0.0, cond_keys=())
        return cls([base_model, upsampler],
                   [GaussianDiffusion.from_schedule("cosine"), GaussianDiffusion.from_schedule("linear")],
                   [BASE_STAGE, upsample])

    @property
    def num_points(self) -> int:
        """Points in a finished sample."""
        return sum(stage.num_points for stage in self.stages)

    def sample_progressive(self, batch_size: int, model_kwargs: dict | None = None,
                           generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yields the running sample after every Heun step of every stage: [B, 6, points so far], unscaled,
        colours not clamped. model_kwargs: conditioning tensors [B, ...]; generator: on the models' device."""
        model_kwargs = model_kwargs or {}
        samples = None
        for model, diffusion, stage in zip(self.models, self.diffusions, self.stages):
            if model.training:
                raise ValueError(f"{type(model).__name__} is in training mode (conditioning dropout active); "
                                 "call .eval() before sampling")
            keys = model_kwargs.keys() if stage.cond_keys is None else stage.cond_keys
            missing = [key for key in keys if key not in model_kwargs]
            if missing:
                raise ValueError(f"stage conditioning {missing} missing from model_kwargs {sorted(model_kwargs)}")
            stage_kwargs = {key: model_kwargs[key] for key in keys}
            prefix = samples
            if prefix is not None:
                stage_kwargs["low_res"] = prefix
            for key, value in stage_kwargs.items():
                if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != batch_size:
                    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f"conditioning {key!r} must be a tensor [B={batch_size}, ...], got {shape}")
            steps = karras_sample_progressive(
                diffusion, model, (batch_size, NUM_CHANNELS, stage.num_points), stage.steps, stage_kwargs,
                sigma_min=stage.sigma_min, sigma_max=stage.sigma_max, rho=stage.rho, s_churn=stage.s_churn,
                s_tmin=stage.s_tmin, s_tmax=stage.s_tmax, s_noise=stage.s_noise,
                guidance_scale=stage.guidance_scale, clip_denoised=self.clip_denoised,
                device=_model_device(model), generator=generator)
            for step in steps:
                samples = unscale_channels(step["pred_xstart"])
                if prefix is not None:
                    samples = torch.cat([prefix, samples], dim=-1)
                yield samples

    def sample(self, batch_size: int, model_kwargs: dict | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Final samples [B, 6, num_points]: xyz, then RGB clamped to [0, 255] (unrounded)."""
        samples = None
        for samples in self.sample_progressive(batch_size, model_kwargs, generator):
            pass
        return torch.cat([samples[:, :3], samples[:, 3:].clamp(0, 255)], dim=1)

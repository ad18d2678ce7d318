"""Karras et al. (2022) sampling of a discrete Gaussian diffusion: σ schedule, denoiser wrapper,
classifier-free guidance on x̂_0, and the Heun sampler (Algorithm 2, with churn).

Behaviour follows openai/point-e `point_e/diffusion/k_diffusion.py`. The ODE state is x_σ = x_0 + σ·ε in model
space, σ = √(1/ᾱ − 1); the diffusion model sees x_σ / √(σ² + 1) at the step whose ᾱ brackets 1/(σ² + 1).
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from lang3d.models.point_e.diffusion import GaussianDiffusion

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i < n, then 0: [steps + 1] float32."""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need steps >= 1 and 0 < sigma_min < sigma_max, got {steps}, {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device)


class GaussianToKarrasDenoiser:
    """D(x_σ, σ) = x̂_0 of a GaussianDiffusion ε/variance model, as the reference's `GaussianToKarrasDenoiser`.

    model: `model(x [B,C,N], t int64 [B], **model_kwargs) -> [B, 2C, N]`. Calling with x_t [B, C, N] and
    σ [B] returns x̂_0 [B, C, N] in model space (clamped to [−1, 1] when clip_denoised).
    """

    def __init__(self, model: Callable[..., torch.Tensor], diffusion: GaussianDiffusion,
                 model_kwargs: dict | None = None, clip_denoised: bool = True):
        self.model = model
        self.diffusion = diffusion
        self.model_kwargs = model_kwargs or {}
        self.clip_denoised = clip_denoised
        # np.interp needs increasing abscissae; ᾱ decreases with t.
        self._alphas_increasing = diffusion.alphas_cumprod[::-1].copy()
        self._t_increasing = np.arange(diffusion.num_timesteps, dtype=np.float64)[::-1].copy()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """σ [B] → int64 [B]: floor of the step linearly interpolated at ᾱ = 1/(σ² + 1), clamped to [0, T)."""
        alpha = 1.0 / (sigma.detach().cpu().numpy() ** 2 + 1)
        ac = self.diffusion.alphas_cumprod
        t = np.interp(alpha, self._alphas_increasing, self._t_increasing).astype(np.int64)
        t = np.where(alpha > ac[0], 0, np.where(alpha <= ac[-1], self.diffusion.num_timesteps - 1, t))
        return torch.from_numpy(t).to(sigma.device)

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if sigma.shape != (x_t.shape[0],):
            raise ValueError(f"sigma must be [B={x_t.shape[0]}], got {tuple(sigma.shape)}")
        t = self.sigma_to_t(sigma)
        c_in = (1.0 / (sigma**2 + 1) ** 0.5).view(-1, *([1] * (x_t.dim() - 1)))
        x_in = x_t * c_in
        out = self.model(x_in, t, **self.model_kwargs)
        return self.diffusion.p_mean_variance(out, x_in, t, clip_denoised=self.clip_denoised)["pred_xstart"]


def with_unconditional_half(model_kwargs: dict, batch_size: int) -> dict:
    """Doubles every conditioning tensor [B, ...] → [2B, ...]: the first half as given, the second zeros."""
    doubled = {}
    for key, value in model_kwargs.items():
        if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != batch_size:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"conditioning {key!r} must be a tensor with batch size {batch_size} first, got {shape}")
        doubled[key] = torch.cat([value, torch.zeros_like(value)], dim=0)
    return doubled


def guidance_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + s·(cond − uncond)."""
    return uncond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    """Guided denoiser over a denoiser whose conditioning was built by `with_unconditional_half`.

    Calling with x [B, C, N], σ [B] evaluates the wrapped denoiser once on [x; x], [σ; σ] and returns
    `guidance_combine(cond half, uncond half, scale)`: [B, C, N].
    """

    def __init__(self, denoiser: Denoiser, scale: float):
        self.denoiser = denoiser
        self.scale = scale

    def __call__(self, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x0 = self.denoiser(torch.cat([x_t, x_t], dim=0), torch.cat([sigma, sigma], dim=0))
        cond, uncond = x0.chunk(2, dim=0)
        return guidance_combine(cond, uncond, self.scale)


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                generator: torch.Generator | None = None) -> Iterator[dict]:
    """Heun steps along `sigmas` (decreasing, last 0) from x at σ_0; Euler for the last step to σ = 0.

    Churn: γ = min(s_churn / (len(sigmas) − 1), √2 − 1) when s_tmin ≤ σ_i ≤ s_tmax, else 0; x gains noise of
    std √(σ̂² − σ_i²)·s_noise, σ̂ = σ_i(1 + γ). A fresh noise draw is taken every step (as the reference).
    Yields dict(x, i, sigma, sigma_hat, pred_xstart) before each step, then dict(x, pred_xstart) at the end.
    """
    if sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 noise levels, got shape {tuple(sigmas.shape)}")
    ones = x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * s_noise
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoiser(x, sigma_hat * ones)
        d = (x - denoised) / sigma_hat
        yield {"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "pred_xstart": denoised}
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, sigma_next * ones)) / sigma_next
            x = x + (d + d_2) / 2 * dt
    yield {"x": x, "pred_xstart": denoised}


def karras_sample_progressive(diffusion: GaussianDiffusion, model: Callable[..., torch.Tensor],
                              shape: tuple[int, ...], steps: int, model_kwargs: dict | None = None,
                              sigma_min: float = 1e-3, sigma_max: float = 120.0, rho: float = 7.0,
                              s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                              s_noise: float = 1.0, guidance_scale: float = 0.0, clip_denoised: bool = True,
                              device: torch.device | str = "cpu",
                              generator: torch.Generator | None = None) -> Iterator[dict]:
    """Samples `shape` = (B, C, N) from x_T ~ N(0, σ_max²) with `sample_heun`; yields its dicts (model space).

    guidance_scale 0 or 1 means no guidance (conditional model alone, as the reference); otherwise the
    conditioning tensors get a zero unconditional half and x̂_0 = uncond + s·(cond − uncond).
    `generator`, when given, must live on `device`.
    """
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device)
    x_T = torch.randn(*shape, generator=generator, device=device) * sigma_max
    model_kwargs = model_kwargs or {}
    if guidance_scale not in (0, 1):
        inner = GaussianToKarrasDenoiser(model, diffusion, with_unconditional_half(model_kwargs, shape[0]),
                                         clip_denoised)
        denoiser: Denoiser = ClassifierFreeGuidance(inner, guidance_scale)
    else:
        denoiser = GaussianToKarrasDenoiser(model, diffusion, model_kwargs, clip_denoised)
    yield from sample_heun(denoiser, x_T, sigmas, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                           s_noise=s_noise, generator=generator)

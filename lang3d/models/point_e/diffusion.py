"""Point-E's Gaussian diffusion: β schedules, channel scaling, forward process, learned-range reverse
process and the training loss (ε-MSE + variational-bound term).

Behaviour follows openai/point-e `point_e/diffusion/gaussian_diffusion.py` (itself from improved/guided
diffusion) for `model_mean_type="epsilon"`, `model_var_type="learned_range"`, `loss_type="mse"`. Schedule
arrays are float64 numpy; per-step coefficients are gathered as float32 (float64 when the data is float64),
as the reference's `.float()` does.

Point clouds are `[B, 6, N]`: xyz (roughly [-0.5, 0.5]) then RGB as 0..255 floats ("unscaled"). The model
works in "model space", where both lie in [-1, 1]; `scale_channels` / `unscale_channels` convert, and only
`GaussianDiffusion.training_losses` (on the way in) and the sampler (on the way out) call them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

NUM_TIMESTEPS = 1024
# xyz × 2; RGB × 2/255 − 1 (the reference stores 2/255 rounded to 0.007843137255).
CHANNEL_SCALES = (2.0, 2.0, 2.0, 2.0 / 255.0, 2.0 / 255.0, 2.0 / 255.0)
CHANNEL_BIASES = (0.0, 0.0, 0.0, -1.0, -1.0, -1.0)
NUM_CHANNELS = len(CHANNEL_SCALES)


def _channel_coefs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 3 or x.shape[1] != NUM_CHANNELS:
        raise ValueError(f"expected a point cloud [B, {NUM_CHANNELS}, N] (xyz + RGB), got shape {tuple(x.shape)}")
    scales = torch.tensor(CHANNEL_SCALES, dtype=x.dtype, device=x.device).view(1, -1, 1)
    biases = torch.tensor(CHANNEL_BIASES, dtype=x.dtype, device=x.device).view(1, -1, 1)
    return scales, biases


def scale_channels(x: torch.Tensor) -> torch.Tensor:
    """[B, 6, N] xyz + RGB 0..255 → model space: xyz × 2, RGB / 127.5 − 1."""
    scales, biases = _channel_coefs(x)
    return x * scales + biases


def unscale_channels(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `scale_channels`: [B, 6, N] model space → xyz + RGB 0..255 (not clamped)."""
    scales, biases = _channel_coefs(x)
    return (x - biases) / scales


def betas_for_alpha_bar(num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta) for i < T: [T] float64."""
    betas = [min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return np.array(betas, dtype=np.float64)


def cosine_betas(num_steps: int = NUM_TIMESTEPS) -> np.ndarray:
    """Base models' schedule ᾱ(s) = cos²((s + 0.008) / 1.008 · π/2), β capped at 0.999: [T] float64."""
    return betas_for_alpha_bar(num_steps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)


def linear_betas(num_steps: int = NUM_TIMESTEPS) -> np.ndarray:
    """Upsampler's schedule: β linear from 1e-4·1000/T to 0.02·1000/T: [T] float64."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every non-batch dimension: [B, ...] → [B]."""
    return x.flatten(1).mean(1)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation 0.5·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as the reference."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under N(means, e^(2·log_scales)) for data quantised to 256 levels in [-1, 1].

    The bin is x ± 1/255; the first (x < −0.999) and last (x > 0.999) bins extend to ∓∞. All tensors of
    one shape; returns that shape, nats.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
                         f"log_scales {tuple(log_scales.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with ε prediction and learned-range variance.

    betas: [T] in (0, 1]. discretized_t0: use the discretised Gaussian NLL as the VB term at t = 0; Point-E's
    configs leave it off (the reference's default), so its VB term at t = 0 is 0.
    Timesteps `t` are int64 [B] step indices in [0, T); t = 0 is one noising step.
    """

    def __init__(self, betas: np.ndarray, discretized_t0: bool = False):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError(f"betas must be a 1-D array of at least 2 values in (0, 1], got {betas!r}")
        self.discretized_t0 = discretized_t0
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log is clipped to the t = 1 value there.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

    @classmethod
    def from_schedule(cls, name: str, num_steps: int = NUM_TIMESTEPS,
                      discretized_t0: bool = False) -> GaussianDiffusion:
        """"cosine" (base models) or "linear" (upsampler), T = num_steps."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown beta schedule {name!r}; expected one of {sorted(SCHEDULES)}")
        return cls(SCHEDULES[name](num_steps), discretized_t0=discretized_t0)

    def _check_t(self, t: torch.Tensor, batch: int) -> None:
        if t.shape != (batch,) or t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must be an integer tensor [B={batch}], got {t.dtype} {tuple(t.shape)}")
        if len(t) and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps}), got [{int(t.min())}, {int(t.max())}]")

    def _extract(self, arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """arr[t] as [B, 1, ..., 1] broadcastable to `like`; float32 unless `like` is float64."""
        self._check_t(t, like.shape[0])
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        values = torch.from_numpy(arr).to(t.device)[t].to(dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def sample_timesteps(self, batch_size: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training timesteps: int64 [batch_size] in [0, T)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def q_mean_variance(self, x_start: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x_0) = N(√ᾱ_t x_0, 1 − ᾱ_t): (mean like x_start, variance [B,1,..], log variance [B,1,..])."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        return (mean, self._extract(1.0 - self.alphas_cumprod, t, x_start),
                self._extract(self.log_one_minus_alphas_cumprod, t, x_start))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (model space, like x_start); ε ~ N(0, I) unless given."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x_0): (mean like x_t, variance β̃_t [B,1,..], clipped log β̃_t [B,1,..])."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape")
        mean = (self._extract(self.posterior_mean_coef1, t, x_t) * x_start
                + self._extract(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._extract(self.posterior_variance, t, x_t),
                self._extract(self.posterior_log_variance_clipped, t, x_t))

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε̂ (model space, like x_t)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def split_model_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 2C, N] model output → (ε̂ [B, C, N], variance values v [B, C, N] in [−1, 1])."""
        batch, channels = x_t.shape[:2]
        if model_output.shape != (batch, 2 * channels, *x_t.shape[2:]):
            raise ValueError(f"model output must be [B, 2C, ...] = {(batch, 2 * channels, *x_t.shape[2:])} "
                             f"(ε then variance values), got {tuple(model_output.shape)}")
        return model_output[:, :channels], model_output[:, channels:]

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """p(x_{t−1} | x_t) from a [B, 2C, N] model output (ε̂, v).

        log σ² = f·log β_t + (1 − f)·log β̃_t (clipped) with f = (v + 1)/2; x̂_0 from ε̂ (clamped to [−1, 1]
        when clip_denoised); mean = posterior mean at x̂_0. Returns dict(mean, variance, log_variance,
        pred_xstart), each like x_t.
        """
        eps, var_values = self.split_model_output(model_output, x_t)
        min_log = self._extract(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._extract(self.log_betas, t, x_t)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """One variational-bound term per sample, bits per dimension: [B].

        KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)) for t > 0; at t = 0 the discretised Gaussian NLL of x_0
        when `discretized_t0`, else 0 (the reference's Point-E setting). All tensors in model space.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        if self.discretized_t0:
            nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
            decoder_nll = mean_flat(nll) / math.log(2.0)
        else:
            decoder_nll = torch.zeros_like(kl)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(self, model: Callable[..., torch.Tensor], x_start: torch.Tensor, t: torch.Tensor,
                        model_kwargs: dict | None = None, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Point-E's loss from one model call: ε-MSE + VB term (mean gradient stopped in the VB term).

        x_start: [B, 6, N] unscaled (xyz + RGB 0..255), scaled here; t: int64 [B]; noise: [B, 6, N] model
        space. Returns per-sample [B] tensors `loss` = mse + vb, `mse`, `vb` (bits/dim), and `pred_xstart`
        [B, 6, N] in model space (`unscale_channels` → xyz + RGB 0..255), derived from the same forward pass
        with gradient flowing into ε̂, for extra losses on x̂_0.
        """
        x_start = scale_channels(x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, t, **(model_kwargs or {}))
        eps, var_values = self.split_model_output(model_output, x_t)
        # The VB term trains the variance only: the mean's ε̂ enters it detached, as the reference's `frozen_out`.
        frozen_out = torch.cat([eps.detach(), var_values], dim=1)
        vb = self.vb_terms_bpd(frozen_out, x_start, x_t, t)
        mse = mean_flat((noise - eps) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "pred_xstart": self.predict_xstart_from_eps(x_t, t, eps)}

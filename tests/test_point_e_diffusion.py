"""Point-E diffusion, Karras Heun sampling with guidance, and the two-stage sampler, against independent
computations (numpy float64 from the β's, scipy's normal CDF, closed-form Gaussian ODE solutions)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from lang3d.models.point_e.diffusion import (GaussianDiffusion, approx_standard_normal_cdf, cosine_betas,
                                             discretized_gaussian_log_likelihood, linear_betas, normal_kl,
                                             scale_channels, unscale_channels)
from lang3d.models.point_e.karras import (ClassifierFreeGuidance, GaussianToKarrasDenoiser, guidance_combine,
                                          karras_sample_progressive, karras_sigmas, sample_heun,
                                          with_unconditional_half)
from lang3d.models.point_e.sampler import PointCloudSampler, StageConfig


class TinyEpsNet(nn.Module):
    """Test stand-in for a Point-E denoiser: 1×1 convs with a sinusoidal time embedding, optional vector
    conditioning `cond` [B, D] and low-res cloud `low_res` [B, 6, M]; returns [B, 12, N] (ε, then v in [-1, 1]).
    Records every call's inputs."""

    def __init__(self, cond_dim: int = 0, low_res: bool = False, hidden: int = 16):
        super().__init__()
        self.inp = nn.Conv1d(6, hidden, 1)
        self.time = nn.Linear(16, hidden)
        self.cond = nn.Linear(cond_dim, hidden) if cond_dim else None
        self.low = nn.Linear(6, hidden) if low_res else None
        self.out = nn.Conv1d(hidden, 12, 1)
        self.calls = []

    def forward(self, x, t, cond=None, low_res=None):
        self.calls.append({"x": x, "t": t, "cond": cond, "low_res": low_res})
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=torch.float32) / 8)
        angles = t.float()[:, None] * freqs
        h = self.inp(x) + self.time(torch.cat([angles.cos(), angles.sin()], 1))[..., None]
        if self.cond is not None:
            h = h + self.cond(cond)[..., None]
        if self.low is not None:
            h = h + self.low(scale_channels(low_res).mean(-1))[..., None]
        out = self.out(torch.tanh(h))
        return torch.cat([out[:, :6], torch.tanh(out[:, 6:])], dim=1)


class FixedOutput(nn.Module):
    """Returns a trainable [B, 12, N] tensor whatever the input (to follow gradients through the loss)."""

    def __init__(self, shape):
        super().__init__()
        self.value = nn.Parameter(torch.randn(shape, dtype=torch.float64) * 0.5)

    def forward(self, x, t):
        return self.value


def alphas_cumprod_np(betas, t):
    return float(np.prod(1.0 - betas[: t + 1]))


def point_cloud(batch=2, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, 3, n, generator=g, dtype=dtype) - 0.5
    rgb = torch.rand(batch, 3, n, generator=g, dtype=dtype) * 255
    return torch.cat([xyz, rgb], 1)


# ---------------------------------------------------------------- schedules and channel scaling

def test_cosine_schedule_matches_alpha_bar_and_caps_beta():
    T = 1024
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    betas = cosine_betas(T)
    raw = 1 - f(np.arange(1, T + 1) / T) / f(np.arange(T) / T)
    capped = raw > 0.999
    assert capped.any() and (betas[capped] == 0.999).all() and betas.max() == 0.999
    np.testing.assert_allclose(betas[~capped], raw[~capped], rtol=1e-12)
    first_cap = int(np.argmax(capped))
    ac = GaussianDiffusion(betas).alphas_cumprod
    np.testing.assert_allclose(ac[:first_cap], f(np.arange(1, first_cap + 1) / T) / f(0.0), rtol=1e-10)


def test_linear_schedule():
    betas = linear_betas(1024)
    assert betas.shape == (1024,)
    assert betas[0] == pytest.approx(1e-4 * 1000 / 1024, rel=1e-12)
    assert betas[-1] == pytest.approx(0.02 * 1000 / 1024, rel=1e-12)
    np.testing.assert_allclose(np.diff(betas), (betas[-1] - betas[0]) / 1023, rtol=1e-9)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        GaussianDiffusion.from_schedule("quadratic")


def test_channel_scaling_values_and_roundtrip():
    x = torch.tensor([[[0.5, -0.25], [0.0, 0.1], [-0.5, 0.3], [0.0, 255.0], [127.5, 51.0], [255.0, 0.0]]])
    scaled = scale_channels(x)
    expected = torch.cat([x[:, :3] * 2, x[:, 3:] / 127.5 - 1], 1)
    torch.testing.assert_close(scaled, expected)
    assert scaled.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(unscale_channels(scaled), x)
    with pytest.raises(ValueError, match=r"\[B, 6, N\]"):
        scale_channels(torch.zeros(2, 3, 4))


# ---------------------------------------------------------------- forward process and posterior

@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_q_sample_and_q_mean_variance_closed_form(schedule):
    diff = GaussianDiffusion.from_schedule(schedule)
    x0 = scale_channels(point_cloud(batch=4))
    t = torch.tensor([0, 10, 500, 1023])
    noise = torch.randn_like(x0)
    ab = torch.tensor([alphas_cumprod_np(diff.betas, int(s)) for s in t], dtype=torch.float64).view(-1, 1, 1)
    torch.testing.assert_close(diff.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    mean, var, log_var = diff.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, ab.sqrt() * x0)
    torch.testing.assert_close(var, 1 - ab)
    torch.testing.assert_close(log_var, torch.log(1 - ab))
    # Monte-Carlo moments of q_sample at one step.
    x1 = x0[:1, :, :1].expand(20000, 6, 1).contiguous()
    samples = diff.q_sample(x1, torch.full((20000,), 300), torch.randn_like(x1))
    ab300 = alphas_cumprod_np(diff.betas, 300)
    torch.testing.assert_close(samples.mean(0), math.sqrt(ab300) * x1[0], atol=0.03, rtol=0)
    torch.testing.assert_close(samples.var(0), torch.full_like(x1[0], 1 - ab300), atol=0.03, rtol=0)


def test_posterior_matches_bayes_rule():
    diff = GaussianDiffusion.from_schedule("cosine")
    x0, xt = torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64)
    t = torch.tensor([1, 200, 1023])
    mean, var, log_var = diff.q_posterior_mean_variance(x0, xt, t)
    for b, s in enumerate(t.tolist()):
        beta, ab_prev = diff.betas[s], alphas_cumprod_np(diff.betas, s - 1)
        # q(x_t | x_{t-1}) = N(√α x_{t-1}, β) times q(x_{t-1} | x_0) = N(√ᾱ_{t-1} x_0, 1 − ᾱ_{t-1}).
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        expected_mean = (math.sqrt(1 - beta) / beta * xt[b].numpy()
                         + math.sqrt(ab_prev) / (1 - ab_prev) * x0[b].numpy()) / precision
        np.testing.assert_allclose(mean[b].numpy(), expected_mean, rtol=1e-9, atol=1e-12)
        assert var[b].item() == pytest.approx(1 / precision, rel=1e-9)
        assert log_var[b].item() == pytest.approx(math.log(1 / precision), rel=1e-9)
    # t = 0: the posterior is a point mass at x_0; its log variance is clipped to the t = 1 value.
    mean0, var0, log_var0 = diff.q_posterior_mean_variance(x0, xt, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x0)
    assert (var0 == 0).all()
    torch.testing.assert_close(log_var0, log_var[:1].expand_as(log_var0))


def test_p_mean_variance_learned_range():
    diff = GaussianDiffusion.from_schedule("linear")
    xt = torch.randn(3, 6, 4, dtype=torch.float64)
    eps = torch.randn(3, 6, 4, dtype=torch.float64)
    v = torch.stack([torch.full((6, 4), -1.0), torch.full((6, 4), 1.0), torch.full((6, 4), 0.2)]).double()
    t = torch.tensor([5, 5, 700])
    out = diff.p_mean_variance(torch.cat([eps, v], 1), xt, t)
    post_log = [math.log(diff.betas[s] * (1 - alphas_cumprod_np(diff.betas, s - 1))
                         / (1 - alphas_cumprod_np(diff.betas, s))) for s in t.tolist()]
    expected = [post_log[0], math.log(diff.betas[5]), 0.6 * math.log(diff.betas[700]) + 0.4 * post_log[2]]
    for b in range(3):
        torch.testing.assert_close(out["log_variance"][b], torch.full((6, 4), expected[b], dtype=torch.float64))
    ab = torch.tensor([alphas_cumprod_np(diff.betas, s) for s in t.tolist()], dtype=torch.float64).view(-1, 1, 1)
    x0 = (xt - (1 - ab).sqrt() * eps) / ab.sqrt()
    torch.testing.assert_close(out["pred_xstart"], x0)
    torch.testing.assert_close(out["mean"], diff.q_posterior_mean_variance(x0, xt, t)[0])
    clipped = diff.p_mean_variance(torch.cat([eps, v], 1), xt, t, clip_denoised=True)["pred_xstart"]
    torch.testing.assert_close(clipped, x0.clamp(-1, 1))
    with pytest.raises(ValueError, match="model output"):
        diff.p_mean_variance(eps, xt, t)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1024\)"):
        diff.p_mean_variance(torch.cat([eps, v], 1), xt, torch.tensor([0, 1, 1024]))


# ---------------------------------------------------------------- VB term

def test_normal_kl_closed_form_and_monte_carlo():
    m1, m2 = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([-0.2, 0.5], dtype=torch.float64)
    lv1, lv2 = torch.tensor([-1.0, 0.4], dtype=torch.float64), torch.tensor([0.2, -0.7], dtype=torch.float64)
    ours = normal_kl(m1, lv1, m2, lv2)
    p, q = torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(p, q))
    noise = torch.randn(200000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = m1 + (0.5 * lv1).exp() * noise  # seeded Monte Carlo: the tolerance is not left to chance
    torch.testing.assert_close(ours, (p.log_prob(z) - q.log_prob(z)).mean(0), atol=0.02, rtol=0)


def test_discretized_gaussian_log_likelihood_vs_cdf_difference():
    assert (approx_standard_normal_cdf(torch.linspace(-8, 8, 2001, dtype=torch.float64)).numpy()
            - norm.cdf(np.linspace(-8, 8, 2001))).__abs__().max() < 2e-4
    # Edge bins (x beyond ±0.999) extend to ∓∞.
    x = torch.tensor([-1.0, -0.5, 0.0, 0.2, 1.0, 1.0, 0.9995, -0.9995], dtype=torch.float64)
    means = torch.tensor([-0.98, -0.49, 0.01, 0.25, 0.99, 0.0, 1.2, -1.1], dtype=torch.float64)
    log_scales = torch.log(torch.tensor([0.02, 0.01, 0.005, 0.3, 0.05, 0.4, 0.1, 0.1], dtype=torch.float64))
    prob = discretized_gaussian_log_likelihood(x, means, log_scales).exp().numpy()
    sd = log_scales.exp().numpy()
    upper = np.where(x.numpy() > 0.999, np.inf, x.numpy() + 1 / 255)
    lower = np.where(x.numpy() < -0.999, -np.inf, x.numpy() - 1 / 255)
    expected = norm.cdf(upper, means.numpy(), sd) - norm.cdf(lower, means.numpy(), sd)
    np.testing.assert_allclose(prob, expected, atol=4e-4)


@pytest.mark.parametrize("discretized_t0", [False, True])
def test_vb_terms_against_independent_kl(discretized_t0):
    diff = GaussianDiffusion.from_schedule("cosine", discretized_t0=discretized_t0)
    x0 = scale_channels(point_cloud(batch=3, n=4)).clamp(-1, 1)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 900])
    xt = diff.q_sample(x0, t, noise)
    out = torch.cat([torch.randn_like(x0), torch.rand_like(x0) * 2 - 1], 1)
    vb = diff.vb_terms_bpd(out, x0, xt, t)
    for b, s in enumerate(t.tolist()):
        beta, ab = diff.betas[s], alphas_cumprod_np(diff.betas, s)
        ab_prev = alphas_cumprod_np(diff.betas, s - 1) if s else 1.0
        # Posterior variance β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); at t = 0 its log is clipped to the t = 1 value.
        clip_var = diff.betas[1] * (1 - ab) / (1 - alphas_cumprod_np(diff.betas, 1))
        post_log_var_clipped = math.log(beta * (1 - ab_prev) / (1 - ab) if s else clip_var)
        coef_x0, coef_xt = math.sqrt(ab_prev) * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        eps, v = out[b, :6].numpy(), out[b, 6:].numpy()
        x0_hat = (xt[b].numpy() - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        frac = (v + 1) / 2
        model_log_var = frac * math.log(beta) + (1 - frac) * post_log_var_clipped
        true_mean = coef_x0 * x0[b].numpy() + coef_xt * xt[b].numpy()
        model_mean = coef_x0 * x0_hat + coef_xt * xt[b].numpy()
        if s > 0:
            var1, var2 = math.exp(post_log_var_clipped), np.exp(model_log_var)
            kl = 0.5 * (np.log(var2 / var1) + (var1 + (true_mean - model_mean) ** 2) / var2 - 1)
            assert vb[b].item() == pytest.approx(kl.mean() / math.log(2), rel=1e-9)
        elif not discretized_t0:
            assert vb[b].item() == 0.0
        else:
            sd, xb = np.exp(0.5 * model_log_var), x0[b].numpy()
            upper = np.where(xb > 0.999, np.inf, xb + 1 / 255)
            lower = np.where(xb < -0.999, -np.inf, xb - 1 / 255)
            prob = norm.cdf(upper, model_mean, sd) - norm.cdf(lower, model_mean, sd)
            assert vb[b].item() == pytest.approx(-np.log(prob).mean() / math.log(2), rel=0.05)


# ---------------------------------------------------------------- training loss

def test_training_losses_mse_pred_xstart_and_gradient_stops():
    torch.manual_seed(0)
    diff = GaussianDiffusion.from_schedule("cosine")
    x = point_cloud(batch=3, n=7, dtype=torch.float32)
    t = torch.tensor([0, 17, 1000])
    noise = torch.randn(3, 6, 7)
    model = TinyEpsNet()
    terms = diff.training_losses(model, x, t, noise=noise)
    x_scaled = torch.cat([x[:, :3] * 2, x[:, 3:] / 127.5 - 1], 1)
    ab = torch.tensor([alphas_cumprod_np(diff.betas, s) for s in t.tolist()], dtype=torch.float64).view(-1, 1, 1)
    xt = (ab.sqrt() * x_scaled.double() + (1 - ab).sqrt() * noise.double()).float()
    torch.testing.assert_close(model.calls[0]["x"], xt, rtol=0, atol=1e-5)
    eps = model(model.calls[0]["x"], t)[:, :6]
    torch.testing.assert_close(terms["mse"], ((eps - noise) ** 2).mean(dim=(1, 2)), rtol=1e-5, atol=1e-6)
    x0_hat = (model.calls[0]["x"].double() - (1 - ab).sqrt() * eps.double()) / ab.sqrt()
    torch.testing.assert_close(terms["pred_xstart"], x0_hat.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    assert terms["vb"][0] == 0 and (terms["vb"][1:] > 0).all()
    assert len(model.calls) == 2  # one call by training_losses, one by this test

    fixed = FixedOutput((3, 12, 7))
    terms = diff.training_losses(fixed, x.double(), t, noise=noise.double())
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), fixed.value, retain_graph=True)
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), fixed.value, retain_graph=True)
    (grad_x0,) = torch.autograd.grad(terms["pred_xstart"].sum(), fixed.value)
    assert (grad_vb[:, :6] == 0).all() and grad_vb[1:, 6:].abs().sum() > 0
    assert (grad_mse[:, 6:] == 0).all() and grad_mse[:, :6].abs().sum() > 0
    assert (grad_x0[:, 6:] == 0).all() and (grad_x0[:, :6] != 0).all()


# ---------------------------------------------------------------- Karras sampling

def test_karras_sigmas_formula():
    sig = karras_sigmas(10, 1e-3, 120.0, rho=7.0)
    assert sig.shape == (11,) and sig[-1] == 0
    i = np.arange(10)
    expected = (120.0 ** (1 / 7) + i / 9 * (1e-3 ** (1 / 7) - 120.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig[:-1].numpy(), expected, rtol=2e-5)
    assert (sig[:-1].diff() < 0).all()
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(10, 1.0, 0.5)


def test_sigma_to_t_against_brute_force():
    diff = GaussianDiffusion.from_schedule("cosine")
    denoiser = GaussianToKarrasDenoiser(TinyEpsNet(), diff)
    sigmas = torch.cat([karras_sigmas(64, 1e-3, 120.0)[:-1], torch.tensor([1e-4, 1e7, 0.5, 3.0])])
    t = denoiser.sigma_to_t(sigmas)
    alpha = 1.0 / (sigmas.numpy() ** 2 + 1)
    brute = np.clip((diff.alphas_cumprod[None, :] >= alpha[:, None]).sum(1) - 1, 0, diff.num_timesteps - 1)
    np.testing.assert_array_equal(t.numpy(), brute)
    assert t.dtype == torch.int64 and t[-4] == 0 and t[-3] == 1023


def test_denoiser_converts_eps_to_x0():
    diff = GaussianDiffusion.from_schedule("linear")
    model = TinyEpsNet().eval()
    sigma = torch.tensor([0.05, 2.0, 80.0])
    x = torch.randn(3, 6, 5) * sigma.view(-1, 1, 1)
    x0 = GaussianToKarrasDenoiser(model, diff, clip_denoised=False)(x, sigma)
    call = model.calls[-1]
    x_in = x / (sigma.view(-1, 1, 1) ** 2 + 1).sqrt()
    torch.testing.assert_close(call["x"], x_in)
    ab = torch.tensor([alphas_cumprod_np(diff.betas, int(s)) for s in call["t"]]).float().view(-1, 1, 1)
    eps = model(x_in, call["t"])[:, :6]
    torch.testing.assert_close(x0, (x_in - (1 - ab).sqrt() * eps) / ab.sqrt(), rtol=1e-4, atol=1e-4)
    clipped = GaussianToKarrasDenoiser(model, diff)(x, sigma)
    torch.testing.assert_close(clipped, x0.clamp(-1, 1))


def gaussian_denoiser(mu, s):
    """Exact denoiser of data ~ N(mu, s²) under x_σ = x_0 + σ ε: E[x_0 | x_σ]."""
    return lambda x, sigma: (s**2 * x + sigma.view(-1, 1, 1) ** 2 * mu) / (s**2 + sigma.view(-1, 1, 1) ** 2)


def test_heun_converges_to_exact_ode_solution():
    mu, s, sigma_max = 0.3, 0.5, 80.0
    x_T = torch.randn(4, 6, 3, dtype=torch.float64) * sigma_max
    # dx/dσ = (x − D)/σ  ⇒  x(σ) − μ ∝ √(s² + σ²).
    exact = mu + (x_T - mu) * s / math.sqrt(s**2 + sigma_max**2)
    errors = []
    for steps in (4, 8, 16, 32, 64):
        sigmas = karras_sigmas(steps, 1e-3, sigma_max).double()
        outs = list(sample_heun(gaussian_denoiser(mu, s), x_T, sigmas))
        assert len(outs) == steps + 1
        errors.append((outs[-1]["x"] - exact).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    scale = (exact - mu).abs().max().item()
    assert errors[-1] < 5e-3 * scale and errors[-2] / errors[-1] > 3.5, errors  # second order


@pytest.mark.parametrize("s_churn", [3.0, 10.0])  # γ = 3/8 and γ clipped to √2 − 1
def test_heun_churn_schedule_and_evaluation_count(s_churn):
    sigma_seen = []

    def denoiser(x, sigma):
        sigma_seen.append(sigma[0].item())
        return x * 0.5

    sigmas = karras_sigmas(8, 1e-3, 120.0)
    list(sample_heun(denoiser, torch.randn(2, 6, 3), sigmas, s_churn=s_churn, s_tmin=0.05, s_tmax=50.0))
    assert len(sigma_seen) == 2 * 8 - 1  # Heun steps plus a final Euler step
    gamma = s_churn / 8 if s_churn / 8 < 2**0.5 - 1 else 2**0.5 - 1
    expected = []
    for i in range(8):
        sig = sigmas[i].item()
        expected.append(sig * (1 + gamma) if 0.05 <= sig <= 50.0 else sig)
        if i < 7:
            expected.append(sigmas[i + 1].item())
    np.testing.assert_allclose(sigma_seen, expected, rtol=1e-6)


def test_classifier_free_guidance_formula_and_zero_uncond():
    torch.manual_seed(0)
    diff = GaussianDiffusion.from_schedule("cosine")
    model = TinyEpsNet(cond_dim=4).eval()
    cond = torch.randn(2, 4)
    x, sigma = torch.randn(2, 6, 5), torch.tensor([3.0, 0.7])
    doubled = with_unconditional_half({"cond": cond}, 2)
    torch.testing.assert_close(doubled["cond"], torch.cat([cond, torch.zeros(2, 4)]))
    guided = ClassifierFreeGuidance(GaussianToKarrasDenoiser(model, diff, doubled, clip_denoised=False), 3.0)(x, sigma)
    assert model.calls[-1]["x"].shape[0] == 4 and (model.calls[-1]["cond"][2:] == 0).all()
    x0_cond = GaussianToKarrasDenoiser(model, diff, {"cond": cond}, clip_denoised=False)(x, sigma)
    x0_uncond = GaussianToKarrasDenoiser(model, diff, {"cond": torch.zeros(2, 4)}, clip_denoised=False)(x, sigma)
    torch.testing.assert_close(guided, x0_uncond + 3.0 * (x0_cond - x0_uncond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance_combine(torch.tensor(2.0), torch.tensor(0.5), 3.0), torch.tensor(5.0))
    with pytest.raises(ValueError, match="batch size 2"):
        with_unconditional_half({"cond": torch.zeros(3, 4)}, 2)
    # guidance 0 or 1: the conditional model alone, no doubled batch.
    model.calls.clear()
    list(karras_sample_progressive(diff, model, (2, 6, 5), 3, {"cond": cond}, guidance_scale=1.0))
    assert len(model.calls) == 5 and all(c["x"].shape[0] == 2 for c in model.calls)


# ---------------------------------------------------------------- two-stage sampler

def test_two_stage_sampler_tiny():
    torch.manual_seed(0)
    base, up = TinyEpsNet(cond_dim=4).eval(), TinyEpsNet(cond_dim=4, low_res=True).eval()
    stages = [StageConfig(num_points=8, steps=4, sigma_max=120.0, s_churn=3.0, cond_keys=("cond",)),
              StageConfig(num_points=24, steps=3, sigma_max=160.0, cond_keys=("cond",))]
    sampler = PointCloudSampler([base, up], [GaussianDiffusion.from_schedule("cosine"),
                                             GaussianDiffusion.from_schedule("linear")], stages)
    cond = torch.randn(2, 4)
    kwargs = {"cond": cond, "other": torch.ones(2)}  # `other` is filtered out by cond_keys
    steps = list(sampler.sample_progressive(2, kwargs, generator=torch.Generator().manual_seed(1)))
    assert len(steps) == 5 + 4 and [s.shape[-1] for s in steps] == [8] * 5 + [32] * 4
    base_final = steps[4]
    low_res = up.calls[0]["low_res"]
    torch.testing.assert_close(low_res[:2], base_final)  # unscaled base output, cond half
    assert (low_res[2:] == 0).all() and (up.calls[0]["cond"][2:] == 0).all()
    assert len(base.calls) == 7 and len(up.calls) == 5
    torch.testing.assert_close(steps[-1][..., :8], base_final)

    out = sampler.sample(2, {"cond": cond}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, :3], steps[-1][:, :3])
    torch.testing.assert_close(out[:, 3:], steps[-1][:, 3:].clamp(0, 255))
    assert out.shape == (2, 6, 32) and sampler.num_points == 32
    assert out[:, 3:].min() >= 0 and out[:, 3:].max() <= 255

    with pytest.raises(ValueError, match="missing from model_kwargs"):
        sampler.sample(2, {})
    with pytest.raises(ValueError, match="must be a tensor"):
        sampler.sample(2, {"cond": torch.randn(3, 4)})
    base.train()
    with pytest.raises(ValueError, match="training mode"):
        sampler.sample(2, {"cond": cond})


def test_point_e_default_sampler_counts_and_shapes():
    base, up = TinyEpsNet(cond_dim=4).eval(), TinyEpsNet(low_res=True).eval()
    sampler = PointCloudSampler.point_e(base, up, text_vector=True)
    assert [s.sigma_max for s in sampler.stages] == [120.0, 160.0] and [s.s_churn for s in sampler.stages] == [3.0, 0.0]
    assert [s.guidance_scale for s in sampler.stages] == [3.0, 0.0]
    out = sampler.sample(1, {"cond": torch.randn(1, 4)})
    assert out.shape == (1, 6, 4096)
    assert len(base.calls) == 127 and base.calls[0]["x"].shape == (2, 6, 1024)
    assert len(up.calls) == 127 and up.calls[0]["x"].shape == (1, 6, 3072) and up.calls[0]["cond"] is None
    assert up.calls[0]["low_res"].shape == (1, 6, 1024)
    assert out[:, 3:].min() >= 0 and out[:, 3:].max() <= 255

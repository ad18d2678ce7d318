"""Pixel-voxel contrastive loss (Eq. 14) against a naive per-pair loop, and the masked depth L1."""
import math

import pytest
import torch

from lang3d.models.losses import masked_l1, pixel_voxel_contrastive_loss


def eq14_naive(h2d: torch.Tensor, h3d: torch.Tensor, tau: float) -> float:
    """Eq. (14) term by term with Python loops over S."""
    def cos(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    M = len(h2d)
    total = 0.0
    for k in range(M):
        num = math.exp(cos(h2d[k], h3d[k]) / tau)
        den_voxels = sum(math.exp(cos(h2d[k], h3d[p]) / tau) for p in range(M))
        den_pixels = sum(math.exp(cos(h2d[q], h3d[k]) / tau) for q in range(M))
        total += math.log(num / den_voxels) + math.log(num / den_pixels)
    return -total / M


def test_matches_naive_equation():
    torch.manual_seed(0)
    a, b = torch.randn(17, 8, dtype=torch.float64), torch.randn(17, 8, dtype=torch.float64)
    for tau in (0.4, 0.07):
        assert float(pixel_voxel_contrastive_loss(a, b, tau)) == pytest.approx(eq14_naive(a, b, tau), rel=1e-9)


def test_aligned_pairs_score_lower_than_shuffled():
    torch.manual_seed(1)
    a = torch.randn(64, 16)
    aligned = pixel_voxel_contrastive_loss(a, a + 0.01 * torch.randn_like(a), 0.4)
    shuffled = pixel_voxel_contrastive_loss(a, a[torch.randperm(64)], 0.4)
    assert aligned < shuffled
    # lower bound: each term is at least -log(1) = 0, and with identical features both softmaxes are maximal
    assert aligned > 0


def test_scale_invariance_and_gradients():
    torch.manual_seed(2)
    a = torch.randn(10, 4, requires_grad=True)
    b = torch.randn(10, 4)
    loss = pixel_voxel_contrastive_loss(a, b, 0.4)
    assert torch.allclose(loss, pixel_voxel_contrastive_loss(3 * a, 0.5 * b, 0.4))
    loss.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal shape"):
        pixel_voxel_contrastive_loss(torch.zeros(3, 4), torch.zeros(4, 4), 0.4)


def test_masked_l1():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert float(masked_l1(pred, target)) == (1.0 + 2.0) / 2
    assert float(masked_l1(pred, torch.zeros_like(target))) == 0.0


def test_an_empty_pair_set_gives_zero_not_nan():
    pixels = torch.randn(0, 8, requires_grad=True)
    voxels = torch.randn(0, 8, requires_grad=True)
    loss = pixel_voxel_contrastive_loss(pixels, voxels, 0.4)
    assert loss.item() == 0.0
    loss.backward()
    assert pixels.grad is not None and voxels.grad is not None

"""Tests for sepe.geometric_losses against brute-force double loops on small clouds. CPU."""
import math

import pytest
import torch

from sepe.geometric_losses import (COLOR_SCALE, chamfer_distance, color_loss, laplacian_smoothness,
                                   mean_neighbour_distance, uniformity)


def cloud(b, n, seed):
    """[b,6,n] float64: xyz in [-0.5,0.5], RGB in 0..255 (Point-E data units)."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(b, 3, n, generator=g, dtype=torch.float64) - 0.5
    rgb = torch.rand(b, 3, n, generator=g, dtype=torch.float64) * 255
    return torch.cat([xyz, rgb], 1)


def pts(c, b):
    """Cloud b as python lists: [(xyz tuple, rgb tuple)]."""
    return [(tuple(c[b, :3, i].tolist()), tuple(c[b, 3:, i].tolist())) for i in range(c.shape[2])]


def dist(p, q):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(p, q)))


def k_nearest_others(points, i, k):
    others = sorted((dist(points[i][0], points[j][0]), j) for j in range(len(points)) if j != i)
    return [j for _, j in others[:k]]


PRED, TARGET = cloud(2, 11, 0), cloud(2, 8, 1)


@pytest.mark.parametrize("squared", [True, False])
def test_chamfer_matches_double_loop(squared):
    for b in range(2):
        p, q = pts(PRED, b), pts(TARGET, b)
        d = (lambda u, v: dist(u, v) ** 2) if squared else dist
        ref = (sum(min(d(a, c) for c, _ in q) for a, _ in p) / len(p)
               + sum(min(d(c, a) for a, _ in p) for c, _ in q) / len(q))
        assert chamfer_distance(PRED, TARGET, squared=squared)[b].item() == pytest.approx(ref, rel=1e-9)
    assert chamfer_distance(PRED, PRED, squared=squared).abs().max() == 0


def test_color_loss_matches_double_loop():
    for b in range(2):
        p, q = pts(PRED, b), pts(TARGET, b)
        ref = 0.0
        for xyz, rgb in p:
            nearest = min(range(len(q)), key=lambda j: dist(xyz, q[j][0]))
            ref += sum(((c1 - c2) / 127.5) ** 2 for c1, c2 in zip(rgb, q[nearest][1]))
        assert color_loss(PRED, TARGET)[b].item() == pytest.approx(ref / len(p), rel=1e-9)
    assert COLOR_SCALE == 1 / 127.5
    assert color_loss(PRED, TARGET, color_scale=1.0)[0] == pytest.approx(color_loss(PRED, TARGET)[0] * 127.5 ** 2)


@pytest.mark.parametrize("k", [1, 4])
def test_laplacian_matches_double_loop(k):
    for b in range(2):
        p = pts(PRED, b)
        ref = 0.0
        for i in range(len(p)):
            nb = k_nearest_others(p, i, k)
            mean = [sum(p[j][0][a] for j in nb) / k for a in range(3)]
            ref += sum((p[i][0][a] - mean[a]) ** 2 for a in range(3))
        assert laplacian_smoothness(PRED, k=k)[b].item() == pytest.approx(ref / len(p), rel=1e-9)


@pytest.mark.parametrize("k,radius", [(3, 0.1), (5, 0.0)])
def test_uniformity_and_spacing_match_double_loop(k, radius):
    for b in range(2):
        p = pts(PRED, b)
        ref = sum(sum((dist(p[i][0], p[j][0]) - radius) ** 2 for j in k_nearest_others(p, i, k)) / k
                  for i in range(len(p))) / len(p)
        assert uniformity(PRED, radius, k=k)[b].item() == pytest.approx(ref, rel=1e-9)
        spacing = sum(dist(p[i][0], p[j][0]) for i in range(len(p)) for j in k_nearest_others(p, i, k)) / (len(p) * k)
        assert mean_neighbour_distance(PRED, k=k)[b].item() == pytest.approx(spacing, rel=1e-9)
    per_cloud = torch.tensor([radius, 0.3], dtype=torch.float64)
    both = uniformity(PRED, per_cloud, k=k)
    assert both[0] == uniformity(PRED, radius, k=k)[0] and both[1] == uniformity(PRED, 0.3, k=k)[1]


def test_gradients_are_finite_and_reach_the_prediction():
    pred = PRED.clone().requires_grad_(True)
    dup = torch.cat([pred, pred[:, :, :1]], 2)            # a duplicated point: zero distances must not give NaN
    terms = [chamfer_distance(dup, TARGET, squared=False), chamfer_distance(dup, TARGET), color_loss(dup, TARGET),
             laplacian_smoothness(dup, k=3), uniformity(dup, 0.05, k=3)]
    for term in terms:
        (grad,) = torch.autograd.grad(term.sum(), pred)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: uniformity(x, 0.05, k=3), (pred,))
    assert torch.autograd.gradcheck(lambda x: chamfer_distance(x, TARGET, squared=False), (pred,))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"chamfer_distance: pred must be float \[B, 6, N\]"):
        chamfer_distance(PRED[:, :3], TARGET)
    with pytest.raises(ValueError, match="color_loss: pred and target batch sizes differ"):
        color_loss(PRED, TARGET[:1])
    with pytest.raises(ValueError, match=r"laplacian_smoothness: k must be in \[1, N - 1\] = \[1, 10\]"):
        laplacian_smoothness(PRED, k=11)
    with pytest.raises(ValueError, match="uniformity: radius"):
        uniformity(PRED, -0.1)
    with pytest.raises(ValueError, match="uniformity: radius"):
        uniformity(PRED, torch.ones(3))

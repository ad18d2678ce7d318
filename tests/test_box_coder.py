"""VoteNet box parametrisation: round trips, heading-bin edges, size residuals, decoding of network scores."""
import math

import pytest
import torch

from text4point.box_coder import BoxCoder

MEAN = torch.tensor([[2.0, 1.5, 0.9], [0.6, 0.6, 0.8], [0.5, 1.0, 1.7]])


def votenet_angle2class(angle, num_class):
    """VoteNet's ``angle2class`` as a scalar Python function (angle any value; residual in radians)."""
    angle = angle % (2 * math.pi)
    per_class = 2 * math.pi / num_class
    shifted = (angle + per_class / 2) % (2 * math.pi)
    cls = int(shifted / per_class)
    return cls, shifted - (cls * per_class + per_class / 2)


def random_boxes(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(MEAN), (n,), generator=g)
    size = MEAN[labels].to(dtype) * (0.5 + torch.rand(n, 3, generator=g, dtype=dtype))
    heading = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * math.pi            # [-π, π)
    centre = torch.randn(n, 3, generator=g, dtype=dtype) * 3
    return torch.cat([centre, size, heading[:, None]], 1), labels


@pytest.mark.parametrize("bins", [1, 2, 12])
def test_encode_decode_round_trip(bins):
    coder = BoxCoder(MEAN, bins)
    boxes, labels = random_boxes(200, seed=bins)
    enc = coder.encode(boxes, labels)
    assert enc.heading_class.dtype == torch.int64 and enc.heading_class.min() >= 0 and enc.heading_class.max() < bins
    assert (enc.heading_residual >= -1).all() and (enc.heading_residual < 1).all()
    assert torch.equal(enc.size_class, labels)
    back = coder.decode(enc.center, enc.heading_class, enc.heading_residual, enc.size_class, enc.size_residual)
    torch.testing.assert_close(back, boxes, rtol=0, atol=1e-12)
    # float32 as the network uses it
    enc32 = coder.encode(boxes.float(), labels)
    back32 = coder.decode(enc32.center, enc32.heading_class, enc32.heading_residual, enc32.size_class,
                          enc32.size_residual)
    torch.testing.assert_close(back32, boxes.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bins", [1, 12])
def test_heading_bins_match_votenet_angle2class(bins):
    coder = BoxCoder(MEAN, bins)
    angles = torch.linspace(-7.0, 7.0, 301, dtype=torch.float64)   # beyond ±2π: any angle is accepted
    cls, residual = coder.angle_to_class(angles)
    for a, c, r in zip(angles.tolist(), cls.tolist(), residual.tolist()):
        ref_cls, ref_residual = votenet_angle2class(a, bins)
        assert c == ref_cls
        assert r * math.pi / bins == pytest.approx(ref_residual, abs=1e-12)


def test_heading_bin_edges():
    coder = BoxCoder(MEAN, 12)
    w = 2 * math.pi / 12
    # half a bin above 0 starts bin 1 with residual -1; just below stays in bin 0 with residual near +1
    cls, res = coder.angle_to_class(torch.tensor([w / 2, w / 2 - 1e-9, 0.0, -math.pi, math.pi, -w / 2],
                                                 dtype=torch.float64))
    assert cls.tolist() == [1, 0, 0, 6, 6, 0]
    torch.testing.assert_close(res, torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64),
                               atol=1e-8, rtol=0)
    # -π and π are the same heading; decoding gives -π (headings come back in [-π, π))
    back = coder.class_to_angle(cls, res)
    assert back[3].item() == pytest.approx(-math.pi) and back[4].item() == pytest.approx(-math.pi)
    assert back[0].item() == pytest.approx(w / 2)
    # a single bin (ScanNet): class 0, residual = heading / π
    one = BoxCoder(MEAN, 1)
    cls, res = one.angle_to_class(torch.tensor([0.0, 0.5, -3.0]))
    assert cls.tolist() == [0, 0, 0]
    torch.testing.assert_close(res * math.pi, torch.tensor([0.0, 0.5, -3.0]))


def test_size_residual_is_relative_to_the_cluster_mean():
    coder = BoxCoder(MEAN, 1)
    size = torch.tensor([[1.0, 1.5, 0.45], [0.6, 0.3, 1.6]])
    labels = torch.tensor([0, 1])
    residual = coder.size_to_residual(size, labels)
    torch.testing.assert_close(residual, torch.tensor([[-0.5, 0.0, -0.5], [0.0, -0.5, 1.0]]))
    clamped = coder.residual_to_size(torch.tensor([2]), torch.tensor([[-1.5, 0.0, 0.0]]))   # below -1: empty
    torch.testing.assert_close(clamped, torch.tensor([[0.0, 1.0, 1.7]]))
    with pytest.raises(ValueError, match=r"size clusters must lie in \[0, 3\)"):
        coder.size_to_residual(size, torch.tensor([0, 3]))


def test_decode_scores_takes_the_best_bin_and_cluster_with_their_own_residuals():
    coder = BoxCoder(MEAN, 12)
    g = torch.Generator().manual_seed(3)
    center = torch.randn(2, 5, 3, generator=g)
    heading_scores, heading_res = torch.randn(2, 5, 12, generator=g), torch.rand(2, 5, 12, generator=g) * 2 - 1
    size_scores, size_res = torch.randn(2, 5, 3, generator=g), torch.rand(2, 5, 3, 3, generator=g) - 0.5
    boxes = coder.decode_scores(center, heading_scores, heading_res, size_scores, size_res)
    assert boxes.shape == (2, 5, 7)
    w = 2 * math.pi / 12
    for b in range(2):
        for p in range(5):
            h = int(heading_scores[b, p].argmax())
            s = int(size_scores[b, p].argmax())
            heading = (h * w + heading_res[b, p, h].item() * w / 2 + math.pi) % (2 * math.pi) - math.pi
            assert boxes[b, p, 6].item() == pytest.approx(heading, abs=1e-5)
            torch.testing.assert_close(boxes[b, p, 3:6], MEAN[s] * (1 + size_res[b, p, s]))
            torch.testing.assert_close(boxes[b, p, :3], center[b, p])


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="mean_size must be"):
        BoxCoder(torch.ones(3), 1)
    with pytest.raises(ValueError, match="must be finite and > 0"):
        BoxCoder(torch.tensor([[1.0, 0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="num_heading_bin"):
        BoxCoder(MEAN, 0)
    with pytest.raises(ValueError, match=r"boxes must be \[N,7\]"):
        BoxCoder(MEAN, 1).encode(torch.zeros(2, 6), torch.zeros(2, dtype=torch.int64))

"""SEPE evaluation metrics against independent computations."""
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from lang3d.models.clip import load_clip
from sepe.geometric_losses import chamfer_distance
from sepe.metrics import (ChamferDistanceMetric, CLIPRPrecision, EarthMoversDistance, PointFID, PointIS,
                          earth_movers_distance, r_precision_hits)
from sepe.pointcloud_features import PointNet2SSG


def _cloud(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(b, 3, n, generator=g) - 0.5, torch.rand(b, 3, n, generator=g) * 255], 1)


def test_chamfer_metric_is_mean_of_loss_and_accumulates_and_resets():
    a, b = _cloud(3, 20, 0), _cloud(3, 25, 1)
    c, d = _cloud(2, 20, 2), _cloud(2, 15, 3)
    m = ChamferDistanceMetric()
    m.update(a, b)
    m.update(c, d)
    expected = torch.cat([chamfer_distance(a, b), chamfer_distance(c, d)]).mean()
    assert torch.allclose(m.compute(), expected, rtol=1e-6)
    m.reset()
    m.update(c, d)
    assert torch.allclose(m.compute(), chamfer_distance(c, d).mean(), rtol=1e-6)


def test_emd_matches_brute_force_permutations():
    rng = np.random.default_rng(0)
    for _ in range(3):
        p, q = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
        brute = min(np.linalg.norm(p - q[list(perm)], axis=1).mean() for perm in itertools.permutations(range(6)))
        assert earth_movers_distance(p, q) == pytest.approx(brute, rel=1e-12)


def test_emd_metric_subsamples_accumulates_and_rejects_unequal_counts():
    m = EarthMoversDistance(num_points=6)
    a, b = _cloud(2, 6, 4), _cloud(2, 6, 5)
    m.update(a, b)
    expected = np.mean([earth_movers_distance(x[:3].T.numpy(), y[:3].T.numpy()) for x, y in zip(a, b)])
    assert m.compute().item() == pytest.approx(expected, rel=1e-6)
    m.update(_cloud(1, 40, 6), _cloud(1, 30, 7))     # both reduced to 6 points
    assert int(m.count) == 3
    with pytest.raises(ValueError, match="equal counts"):
        m.update(_cloud(1, 4, 6), _cloud(1, 5, 7))
    assert torch.isclose(EarthMoversDistance()(a, a), torch.tensor(0.0))


def _reference_fid(x, y):
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)


def test_fid_matches_scipy_reference_and_is_zero_for_identical_sets():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    y = rng.normal(size=(150, 8)) @ rng.normal(size=(8, 8)) * 0.5 + 0.3
    m = PointFID(PointNet2SSG(width=1).eval(), feature_dim=8)
    m.update(features=torch.from_numpy(x[:120]), real=True)      # accumulates across updates
    m.update(features=torch.from_numpy(x[120:]), real=True)
    m.update(features=torch.from_numpy(y), real=False)
    assert m.compute().item() == pytest.approx(_reference_fid(x, y), rel=1e-4)
    m.reset()
    m.update(features=torch.from_numpy(x), real=True)
    m.update(features=torch.from_numpy(x), real=False)
    assert abs(m.compute().item()) < 1e-4
    m.update(features=torch.from_numpy(y), real=False)      # a new update invalidates the cached value
    assert m.compute().item() > 0.1


def test_inception_score_hand_cases():
    net = PointNet2SSG(width=1).eval()
    constant = torch.zeros(10, 5)
    constant[:, 2] = 50.0
    m = PointIS(net)
    m.update(logits=constant)
    assert m.compute()[0].item() == pytest.approx(1.0, abs=1e-6)
    m.reset()
    m.update(logits=torch.eye(5) * 60.0)                   # confident, all classes equally often
    m.update(logits=torch.eye(5) * 60.0)
    assert m.compute()[0].item() == pytest.approx(5.0, rel=1e-6)
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)).double()
    p = logits.softmax(-1).numpy()
    split_scores = []
    for part in (p[:6], p[6:]):
        marg = part.mean(0)
        split_scores.append(np.exp(np.mean([(row * np.log(row / marg)).sum() for row in part])))
    m = PointIS(net, split_size=6)
    m.update(logits=logits)
    mean, std = m.compute()
    assert mean.item() == pytest.approx(np.mean(split_scores), rel=1e-5)
    assert std.item() == pytest.approx(np.std(split_scores), rel=1e-4, abs=1e-7)


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_feature_network_shapes_through_metrics():
    net = PointNet2SSG(num_classes=40, width=1).eval()
    clouds = _cloud(3, 600, 8)
    assert net.features(clouds[:, :3].transpose(1, 2)).shape == (3, 256)   # 256 × width (point-e: width 2)
    fid, ist = PointFID(net), PointIS(net)
    fid.update(clouds, real=True)
    fid.update(_cloud(3, 600, 9), real=False)
    ist.update(clouds)
    assert torch.isfinite(fid.compute()) and 1.0 <= ist.compute()[0].item() <= 40.0
    assert not any(k.startswith("frozen") for k in fid.state_dict())   # a sub-module kept out of state dicts


def test_r_precision_ranking_logic():
    emb = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    assert r_precision_hits(emb, emb, num_distractors=10).all()
    rnd = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
    txt = torch.randn(400, 16, generator=torch.Generator().manual_seed(2))
    rate = r_precision_hits(rnd, txt, num_distractors=3).float().mean().item()
    assert rate == pytest.approx(1 / 4, abs=0.07)
    top2 = r_precision_hits(rnd, txt, num_distractors=3, top_k=2).float().mean().item()
    assert top2 == pytest.approx(2 / 4, abs=0.08)
    # the true caption ranks first only if no distractor beats it: swap embeddings of objects 0 and 1
    swapped = emb.clone()
    swapped[[0, 1]] = emb[[1, 0]]
    hits = r_precision_hits(swapped, emb, num_distractors=39)
    assert not hits[0] and not hits[1] and hits[2:].all()
    with pytest.raises(ValueError):
        r_precision_hits(emb, emb, num_distractors=40)


def test_clip_r_precision_smoke_through_renderer_and_clip():
    torch.manual_seed(0)
    model, tokenizer = load_clip("lang3d-tiny-ViT")
    m = CLIPRPrecision(model, tokenizer, num_distractors=2, azimuths=(0.0, 180.0))
    clouds = _cloud(4, 200, 10)
    emb = m.embed_clouds(clouds)
    assert emb.shape == (4, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    m.update(clouds[:2], ["a red chair", "a blue table"], ["u0", "u1"])
    m.update(clouds[2:], ["a green lamp", "a wooden box"], ["u2", "u3"])
    value = m.compute()
    order = torch.argsort(torch.cat(m.keys))
    expected = r_precision_hits(torch.cat(m.image_emb)[order], torch.cat(m.text_emb)[order], 2).float().mean()
    assert value == expected and 0.0 <= value.item() <= 1.0
    assert not any(k.startswith("clip") for k in m.state_dict())
    m.reset()
    assert len(m.image_emb) == 0


def test_clip_r_precision_does_not_depend_on_how_samples_are_split_or_ordered():
    """Under DDP each process scores a shard and the states are gathered in rank order: the distractors must follow
    the samples (ordered by name), so 1, 2 or 3 processes, or any batch order, give the same score."""
    torch.manual_seed(0)
    model, tokenizer = load_clip("lang3d-tiny-ViT")
    clouds = _cloud(12, 150, 11)
    captions = [f"object number {i}" for i in range(12)]
    names = [f"uid{i:02d}" for i in range(12)]

    def score(shards):
        """Simulate gathering: each shard's update, states concatenated in shard order. Returns the score and the
        score of distractors picked by position in the gathered list."""
        m = CLIPRPrecision(model, tokenizer, num_distractors=5, azimuths=(0.0,))
        for shard in shards:
            m.update(clouds[shard], [captions[i] for i in shard], [names[i] for i in shard])
        positional = r_precision_hits(torch.cat(m.image_emb), torch.cat(m.text_emb), 5).float().mean().item()
        return m.compute().item(), positional

    one = score([list(range(12))])
    two = score([list(range(0, 12, 2)), list(range(1, 12, 2))])      # DistributedSampler's interleaving
    three = score([list(range(2, 12, 3)), list(range(0, 12, 3)), list(range(1, 12, 3))])
    shuffled = score([[5, 3, 11, 0], [7, 1, 2, 9, 10, 4, 6, 8]])
    assert one[0] == two[0] == three[0] == shuffled[0]
    assert len({one[1], two[1], three[1], shuffled[1]}) > 1        # by position, the split would change the score
    with pytest.raises(ValueError, match="sample names"):
        CLIPRPrecision(model, tokenizer, num_distractors=1).update(clouds[:2], captions[:2], names[:1])

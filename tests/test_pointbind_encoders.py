"""Point-Bind 3D encoders: FPS + kNN grouping, output shapes, permutation invariance, local attention."""
import numpy as np
import pytest
import torch

from lang3d.data.point_ops import farthest_point_sample
from pointbind.encoders import Block, I2PMAEEncoder, PointBERTEncoder, build_encoder, group_points

TINY_BERT = dict(num_groups=16, group_size=8, tokenizer_dim=24, tokenizer_hidden=(8, 16, 16), width=24, depth=2,
                 heads=2, pos_hidden=8)
TINY_I2P = dict(num_groups=(32, 16, 8), group_sizes=(12, 6, 6), dims=(12, 24, 24), depths=(1, 1, 1), heads=2,
                local_radius=(0.4, 0.8, None), tokenizer_hidden=(8, 16, 16))


def cloud(batch=2, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, n, 3, generator=g) * 2 - 1
    return xyz / xyz.norm(dim=-1).amax(-1)[:, None, None]


def test_groups_are_the_k_nearest_points_of_fps_centres():
    xyz = cloud()
    groups = group_points(xyz, num_groups=10, group_size=7)
    assert groups.centres.shape == (2, 10, 3)
    assert groups.neighbourhoods.shape == (2, 10, 7, 3)
    assert groups.index.shape == (2, 10, 7)
    fps = farthest_point_sample(xyz, 10)
    for b in range(2):
        assert torch.equal(groups.centres[b], xyz[b, fps[b]])
        for g in range(10):
            dist = ((xyz[b] - groups.centres[b, g]) ** 2).sum(-1).numpy()
            expected = set(np.argsort(dist, kind="stable")[:7].tolist())
            assert set(groups.index[b, g].tolist()) == expected
            assert groups.index[b, g, 0] == fps[b, g]  # the centre is its own nearest point
            assert torch.allclose(groups.neighbourhoods[b, g], xyz[b, groups.index[b, g]] - groups.centres[b, g])


@pytest.mark.parametrize("name, options, width", [("pointbert", TINY_BERT, 48), ("i2pmae", TINY_I2P, 24)])
def test_encoder_shapes_and_gradients(name, options, width):
    torch.manual_seed(0)
    encoder = build_encoder(name, **options)
    out = encoder(cloud())
    assert out.shape == (2, width) == (2, encoder.out_dim)
    out.square().sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused


def test_paper_sizes():
    assert PointBERTEncoder().out_dim == 768  # cls token ‖ max-pooled tokens, width 384
    i2p = I2PMAEEncoder()
    assert i2p.out_dim == 384 and [len(s) for s in i2p.stages] == [5, 5, 5]
    assert i2p.num_groups == (512, 256, 64) and i2p.group_sizes == (48, 24, 24)


@pytest.mark.parametrize("name, options", [("pointbert", TINY_BERT), ("i2pmae", TINY_I2P)])
def test_pooled_feature_is_invariant_to_point_order(name, options):
    """FPS starts at a fixed index, so shuffling the points changes the centres unless FPS starts at the same
    *point*: with ``fps_start`` following the first point the groups are the same sets, each mini-PointNet
    max-pools over its group, attention is over the (identical) centre sequence, and the feature is equal up
    to float rounding."""
    torch.manual_seed(0)
    encoder = build_encoder(name, **options).eval()
    xyz = cloud(batch=2, n=300, seed=1)
    perm = torch.stack([torch.randperm(300, generator=torch.Generator().manual_seed(s)) for s in (2, 3)])
    shuffled = torch.stack([xyz[b, perm[b]] for b in range(2)])
    start = torch.stack([(perm[b] == 0).nonzero()[0, 0] for b in range(2)])
    with torch.no_grad():
        reference = encoder(xyz)
        same = encoder(shuffled, fps_start=start)
        other_start = encoder(shuffled)
    torch.testing.assert_close(same, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other_start, reference, atol=1e-5)  # the default start point moved with the shuffle


def test_local_attention_ignores_tokens_outside_the_mask():
    torch.manual_seed(0)
    block = Block(dim=8, heads=2).eval()
    x = torch.randn(1, 5, 8)
    mask = torch.eye(5, dtype=torch.bool)[None]
    mask[0, 0, 1] = True  # token 0 sees tokens 0 and 1 only
    changed_far, changed_near = x.clone(), x.clone()
    changed_far[0, 3] = torch.randn(8)  # (a constant shift would vanish in the block's LayerNorm)
    changed_near[0, 1] = torch.randn(8)
    with torch.no_grad():
        base = block(x, mask)[0, 0]
        assert torch.allclose(block(changed_far, mask)[0, 0], base)
        assert not torch.allclose(block(changed_near, mask)[0, 0], base)


def test_bad_configuration_is_an_error():
    with pytest.raises(ValueError, match="unknown point encoder"):
        build_encoder("pointnet")
    with pytest.raises(ValueError, match="one entry per stage"):
        I2PMAEEncoder(num_groups=(8, 4), group_sizes=(4,), dims=(8, 8), depths=(1, 1))
    with pytest.raises(ValueError, match="divisible"):
        Block(dim=10, heads=3)

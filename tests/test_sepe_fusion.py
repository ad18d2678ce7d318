"""Tests for sepe.fusion: Option A (concat + LoRA MLP), Option B (cross-attention + attention pooling), and
driving a Point-E model through its own token layout. CPU, tiny widths."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.lora import LoRALinear
from lang3d.point_e import build_model
from sepe.fusion import ConcatFusion, CrossAttentionFusion, drop_pair, forward_with_condition

GW, TW, W, T, L = 24, 20, 32, 5, 6           # grid width, text width, model width, grid tokens, text length
TINY = dict(width=W, layers=2, heads=2, grid_tokens=T, grid_width=GW)


def tiny(name="base40M", seed=0):
    torch.manual_seed(seed)
    model = build_model(name, **TINY).eval()
    nn.init.normal_(model.output_proj.weight, std=0.1)     # official init is zero: outputs would ignore the input
    return model


def inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randn(b, T, GW, generator=g)
    text = F.normalize(torch.randn(b, TW, generator=g), dim=-1)
    tokens = torch.randn(b, L, TW, generator=g)
    mask = torch.tensor([[True] * L, [True] * 3 + [False] * (L - 3)])[:b]
    return grid, text, tokens, mask


def concat_fusion(**kw):
    torch.manual_seed(1)
    return ConcatFusion(grid_width=GW, text_width=TW, out_width=W, hidden_width=16, **kw).eval()


def cross_fusion(**kw):
    torch.manual_seed(2)
    return CrossAttentionFusion(grid_width=GW, text_width=TW, width=W, heads=2, **kw).eval()


def test_concat_fusion_matches_per_patch_computation():
    fusion = concat_fusion(lora_rank=4)
    assert isinstance(fusion.fc1, LoRALinear) and isinstance(fusion.fc2, LoRALinear) and fusion.fc1.rank == 4
    for layer in (fusion.fc1, fusion.fc2):
        nn.init.normal_(layer.lora_B, std=0.1)
    grid, text, _, _ = inputs()
    out = fusion(grid, text)
    assert out.shape == (2, T, W)
    g = fusion.grid_norm
    for b in range(2):
        for n in range(T):
            patch = F.layer_norm(grid[b, n], (GW,), g.weight, g.bias)
            x = torch.cat([patch, math.sqrt(TW) * text[b]])         # the same text vector on every patch
            h = F.gelu(fusion.fc1.merged_weight() @ x + fusion.fc1.bias)
            torch.testing.assert_close(out[b, n], fusion.fc2.merged_weight() @ h + fusion.fc2.bias)
    plain = concat_fusion(lora_rank=None)
    assert type(plain.fc1) is nn.Linear and all(p.requires_grad for p in plain.parameters())


def test_fusion_drives_point_e_through_its_token_layout():
    model = tiny()
    grid, text, tokens, mask = inputs()
    x, t = torch.randn(2, 6, 7), torch.tensor([10, 500])
    # The fused tokens sit exactly where base40M's embedded grid sits: with cond = embed_grid(grid) the output
    # is base40M's own.
    torch.testing.assert_close(forward_with_condition(model, x, t, model.embed_grid(grid)), model(x, t, grid=grid))
    other = F.normalize(torch.randn(2, TW), dim=-1)
    for fusion, a, b in ((concat_fusion(), (grid, text), (grid, other)),
                         (cross_fusion(), (grid, tokens, mask), (grid, tokens + torch.randn_like(tokens), mask))):
        out = forward_with_condition(model, x, t, fusion(*a))
        assert out.shape == (2, 12, 7)
        assert not torch.allclose(out, forward_with_condition(model, x, t, fusion(*b)), atol=1e-4)   # text matters

    up = tiny("upsample")
    low_res = torch.rand(2, 6, 4) * torch.tensor([1, 1, 1, 255, 255, 255.0]).view(1, 6, 1) - 0.5
    torch.testing.assert_close(forward_with_condition(up, x, t, up.embed_grid(grid), low_res=low_res),
                               up(x, t, low_res=low_res, grid=grid))
    with pytest.raises(ValueError, match="low_res"):
        forward_with_condition(up, x, t, up.embed_grid(grid))
    with pytest.raises(ValueError, match=r"cond must be \[B, grid_tokens, width\]"):
        forward_with_condition(model, x, t, torch.zeros(2, T + 1, W))
    with pytest.raises(TypeError, match="grid-conditioned"):
        forward_with_condition(build_model("base40M-textvec", width=W, layers=1, heads=2), x, t, grid)


def naive_attend(fusion, x, tokens, mask):
    """Per sample, head and query: softmax over the unmasked text positions only, then residual."""
    c = W // fusion.heads
    txt = F.layer_norm(tokens, (TW,), fusion.text_norm.weight, fusion.text_norm.bias)
    q = fusion.q_proj(F.layer_norm(x, (W,), fusion.query_norm.weight, fusion.query_norm.bias))
    k, v = fusion.k_proj(txt), fusion.v_proj(txt)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        valid = mask[b].nonzero().flatten()
        for h in range(fusion.heads):
            cols = slice(h * c, (h + 1) * c)
            for n in range(x.shape[1]):
                scores = torch.stack([q[b, n, cols] @ k[b, j, cols] / math.sqrt(c) for j in valid])
                weights = torch.softmax(scores, 0)
                out[b, n, cols] = sum(wj * v[b, j, cols] for wj, j in zip(weights, valid))
    return x + fusion.out_proj(out)


def test_cross_attention_fusion_equations():
    fusion = cross_fusion()
    grid, _, tokens, mask = inputs()
    x = fusion.image_embed(grid)
    feats = fusion.attend(x, tokens, mask)
    torch.testing.assert_close(feats, naive_attend(fusion, x, tokens, mask))

    pooled, alpha = fusion.pool(feats)
    for b in range(2):
        scores = torch.stack([fusion.pool_query @ feats[b, n] / math.sqrt(W) for n in range(T)])
        a = scores.exp() / scores.exp().sum()
        torch.testing.assert_close(alpha[b], a)
        torch.testing.assert_close(pooled[b], sum(a[n] * feats[b, n] for n in range(T)))
    f = F.layer_norm(fusion.pool_proj(pooled), (W,), fusion.pool_norm.weight, fusion.pool_norm.bias)
    out = fusion(grid, tokens, mask)
    assert out.shape == (2, T, W)
    torch.testing.assert_close(out, feats + f[:, None])
    assert not torch.allclose(out[:, 0], out[:, 1])                   # per-patch tokens, not one broadcast vector


def test_cross_attention_gradients_and_masking():
    fusion = cross_fusion().train()
    fusion.cond_drop_prob = 0.0
    grid, _, tokens, mask = inputs()
    (fusion(grid, tokens, mask) * torch.randn(2, T, W)).sum().backward()
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "pool_query", "pool_proj.weight",
                 "image_embed.1.weight"):
        grad = dict(fusion.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name

    fusion.eval()
    out = fusion(grid, tokens, mask)
    garbage = tokens.clone()
    garbage[1, 3:] = 1e3 * torch.randn(L - 3, TW)                   # padded positions of sample 1
    torch.testing.assert_close(fusion(grid, garbage, mask), out, rtol=0, atol=0)
    changed = tokens.clone()
    changed[1, 1] += torch.randn(TW)                                # a real token of sample 1
    assert not torch.allclose(fusion(grid, changed, mask)[1], out[1], atol=1e-5)
    torch.testing.assert_close(fusion(grid, changed, mask)[0], out[0])

    with pytest.raises(ValueError, match=r"rows \[1\] are fully masked"):
        fusion(grid, tokens, torch.tensor([[True] * L, [False] * L]))
    with pytest.raises(ValueError, match="text_mask must be bool"):
        fusion(grid, tokens, mask.long())
    with pytest.raises(ValueError, match="text_tokens"):
        fusion(grid, tokens[..., :-1], mask)
    with pytest.raises(ValueError, match="grid must be float"):
        fusion(grid[..., :-1], tokens, mask)


def test_clip_embed_init_and_condition_dropout():
    model, fusion = tiny(), cross_fusion()
    grid, text, tokens, mask = inputs()
    fusion.load_point_e_clip_embed(model)
    torch.testing.assert_close(fusion.image_embed(grid), model.embed_grid(grid), rtol=0, atol=0)
    with pytest.raises(ValueError, match="clip_embed"):
        CrossAttentionFusion(grid_width=GW + 1, text_width=TW, width=W, heads=2).load_point_e_clip_embed(model)

    for fusion, cond, zero in ((concat_fusion(cond_drop_prob=1.0), (grid, text), (grid * 0, text * 0)),
                               (cross_fusion(cond_drop_prob=1.0), (grid, tokens, mask),
                                (grid * 0, tokens * 0, mask))):
        dropped = fusion.train()(*cond)
        torch.testing.assert_close(dropped, fusion.eval()(*zero))   # dropped = the unconditional input
        assert not torch.allclose(fusion(*cond), dropped)            # eval: no dropout

    a, b = torch.ones(4000, 3), torch.ones(4000, 2, 2)
    da, db = drop_pair(a, b, 0.3, training=True)
    assert torch.equal(da[:, 0] == 0, db[:, 0, 0] == 0)              # one draw per sample for both
    assert 0.25 < (da[:, 0] == 0).float().mean() < 0.35
    assert drop_pair(a, b, 0.3, training=False)[0] is a
    with pytest.raises(ValueError, match="cond_drop_prob"):
        ConcatFusion(cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="text vector"):
        concat_fusion()(grid, tokens)


def test_paper_sizes():
    """Defaults are the paper's: ViT-L/14 grid [B,256,1024], text 768 -> base40M's [B,256,512] condition."""
    grid = torch.randn(1, 256, 1024)
    assert ConcatFusion().eval()(grid, F.normalize(torch.randn(1, 768), dim=-1)).shape == (1, 256, 512)
    assert ConcatFusion().fc1.rank == 8
    states, mask = torch.randn(1, 77, 768), torch.arange(77)[None] < 9
    assert CrossAttentionFusion().eval()(grid, states, mask).shape == (1, 256, 512)

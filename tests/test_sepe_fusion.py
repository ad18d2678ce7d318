"""Tests for sepe.fusion: Option A (concat MLP), Option B (cross-attention + attention pooling), both built as the
Point-E model's clip_embed(grid) plus a text-driven update that is zero at initialisation; driving a Point-E model
through its own token layout; classifier-free dropout. CPU, tiny widths."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.models.lora import POINT_E_LORA_TARGETS, LoRALinear, apply_lora
from lang3d.models.point_e import build_model
from sepe.conditioned_model import SEPEConditionedModel
from sepe.fusion import ConcatFusion, CrossAttentionFusion, drop_conditions, forward_with_condition

GW, TW, W, T, L = 24, 20, 32, 5, 6           # grid width, text width, model width, grid tokens, text length
TINY = dict(width=W, layers=2, heads=2, grid_tokens=T, grid_width=GW)


def randomise(module: nn.Module, seed: int, std: float = 0.2) -> None:
    """Every parameter ~ N(0, std²) (LayerNorm weights around 1): no zero-initialised layer is left, so every
    path of the module carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            around_one = isinstance(module.get_submodule(name.rpartition(".")[0]), nn.LayerNorm) and name.endswith(
                "weight")
            p.copy_(std * torch.randn(p.shape, generator=g) + (1.0 if around_one else 0.0))


def tiny(name="base40M", seed=0):
    torch.manual_seed(seed)
    model = build_model(name, **TINY).eval()
    randomise(model, seed + 100)                           # random weights, output_proj included
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
    return ConcatFusion(grid_width=GW, text_width=TW, width=W, hidden_width=16, **kw).eval()


def cross_fusion(**kw):
    torch.manual_seed(2)
    return CrossAttentionFusion(grid_width=GW, text_width=TW, width=W, heads=2, **kw).eval()


@pytest.mark.parametrize("name", ["base40M", "upsample"])
@pytest.mark.parametrize("make", [concat_fusion, cross_fusion])
@pytest.mark.parametrize("lora_rank", [4, None])
def test_fused_model_starts_exactly_as_the_point_e_model(name, make, lora_rank):
    """Warm start: at initialisation the fused model is the released model given the same image grid, for any
    text, with random (non-zero) Point-E weights."""
    model = tiny(name)
    fusion = make(lora_rank=lora_rank)
    fusion.load_point_e_clip_embed(model)
    fused = SEPEConditionedModel(model, fusion).eval()
    grid, text, tokens, mask = inputs()
    x, t = torch.randn(2, 6, 7), torch.tensor([10, 900])
    extra = {"low_res": torch.randn(2, 6, 4) * 0.3} if name == "upsample" else {}
    text_kw = {"text_vector": text} if make is concat_fusion else {"text_tokens": tokens, "text_mask": mask}
    reference = model(x, t, grid=grid, **extra)
    assert reference.abs().mean() > 0.1                                # the reference is not trivially zero
    torch.testing.assert_close(fused(x, t, grid=grid, **text_kw, **extra), reference, rtol=0, atol=1e-6)
    # ... and the text is what later moves it: once the zero-initialised update layers are non-zero it matters
    randomise(fusion, 7)
    other = ({"text_vector": F.normalize(torch.randn(2, TW), dim=-1)} if make is concat_fusion else
             {"text_tokens": torch.randn(2, L, TW), "text_mask": mask})
    assert not torch.allclose(fused(x, t, grid=grid, **text_kw, **extra), fused(x, t, grid=grid, **other, **extra),
                              atol=1e-4)


def merged_copy(model: nn.Module, scale: float) -> nn.Module:
    """A copy of ``model`` with every LoRALinear replaced by a plain nn.Linear of weight W + scale · B A."""
    merged = copy.deepcopy(model)
    for name, layer in list(merged.named_modules()):
        if isinstance(layer, LoRALinear):
            plain = nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                plain.weight.copy_(layer.weight + scale * layer.lora_B @ layer.lora_A)
                plain.bias.copy_(layer.bias)
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, plain)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    return merged


@pytest.mark.parametrize("targets", [*POINT_E_LORA_TARGETS, POINT_E_LORA_TARGETS], ids=[*POINT_E_LORA_TARGETS, "all"])
@pytest.mark.parametrize("make", [concat_fusion, cross_fusion])
@pytest.mark.parametrize("name", ["base40M", "upsample"])
def test_lora_model_equals_its_merged_model_with_and_without_autograd(targets, make, name):
    """SEPE ``trainable: lora``: the LoRA updates of the backbone and the fusion count in every mode. Sampling and
    validation run without autograd (``no_grad``, ``inference_mode``), where the transformer takes its in-place
    path; each mode must give the model with W + (alpha / rank) B A merged into plain Linear layers."""
    model = tiny(name)
    fusion = make(lora_rank=4, lora_alpha=8.0)
    fusion.load_point_e_clip_embed(model)
    fused = SEPEConditionedModel(model, fusion).eval()
    unadapted = copy.deepcopy(fused)
    wrapped = apply_lora(model.backbone, targets, rank=4, alpha=8.0)
    assert len(wrapped) == 2 * (1 if isinstance(targets, str) else 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in fused.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.copy_(0.2 * torch.randn(layer.lora_B.shape, generator=g))
    merged = merged_copy(fused, scale=8.0 / 4)

    grid, text, tokens, mask = inputs()
    x, t = torch.randn(2, 6, 7, generator=g), torch.tensor([10, 900])
    extra = {"low_res": torch.randn(2, 6, 4, generator=g) * 0.3} if name == "upsample" else {}
    kw = dict(grid=grid, **({"text_vector": text} if make is concat_fusion else {"text_tokens": tokens,
                                                                                  "text_mask": mask}), **extra)
    expected = merged(x, t, **kw).detach()                     # autograd on: the plain block-by-block path
    assert (expected - unadapted(x, t, **kw)).abs().max() > 0.05    # the LoRA updates move the output
    outputs = {"autograd": fused(x, t, **kw)}
    assert outputs["autograd"].requires_grad
    with torch.no_grad():
        outputs["no_grad"] = fused(x, t, **kw)
    with torch.inference_mode():
        outputs["inference_mode"] = fused(x, t, **kw)
    for mode, out in outputs.items():
        torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{mode}: {m}")


def test_concat_fusion_matches_per_patch_computation():
    fusion = concat_fusion(lora_rank=4)
    norm, proj = fusion.image_embed
    assert isinstance(proj, LoRALinear) and proj.rank == 4 and not norm.weight.requires_grad
    assert type(fusion.fc1) is nn.Linear and fusion.fc1.weight.requires_grad
    assert torch.all(fusion.fc2.weight == 0) and torch.all(fusion.fc2.bias == 0)      # zero-initialised output
    randomise(fusion, 3)
    grid, text, _, _ = inputs()
    out = fusion(grid, text)
    assert out.shape == (2, T, W)
    for b in range(2):
        for n in range(T):
            patch = F.layer_norm(grid[b, n], (GW,), norm.weight, norm.bias)
            x = torch.cat([patch, math.sqrt(TW) * text[b]])         # the same text vector on every patch
            h = F.gelu(fusion.fc1.weight @ x + fusion.fc1.bias)
            expected = proj.merged_weight() @ patch + proj.bias + fusion.fc2.weight @ h + fusion.fc2.bias
            torch.testing.assert_close(out[b, n], expected)
    plain = concat_fusion(lora_rank=None)
    assert type(plain.image_embed[1]) is nn.Linear and all(p.requires_grad for p in plain.parameters())


def test_fusion_drives_point_e_through_its_token_layout():
    model = tiny()
    grid, _, _, _ = inputs()
    x, t = torch.randn(2, 6, 7), torch.tensor([10, 500])
    torch.testing.assert_close(forward_with_condition(model, x, t, model.embed_grid(grid)), model(x, t, grid=grid))
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
    randomise(fusion, 4)
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


def test_cross_attention_learns_from_the_zero_start_and_masks_padding():
    """At initialisation the text-driven layers get gradient (out_proj, the pooled LayerNorm); after one step
    the attention's q/k/v do too."""
    fusion = cross_fusion(lora_rank=None).train()
    grid, _, tokens, mask = inputs()
    target = torch.randn(2, T, W)
    opt = torch.optim.SGD(fusion.parameters(), lr=0.1)
    for step in range(2):
        opt.zero_grad()
        (fusion(grid, tokens, mask) * target).sum().backward()
        grads = {name: p.grad for name, p in fusion.named_parameters()}
        live = {"out_proj.weight", "pool_norm.weight", "image_embed.1.weight"} if step == 0 else set(grads)
        for name in live:
            if name != "k_proj.bias":   # adds the same score to every key of a query: softmax ignores it
                assert grads[name] is not None and grads[name].abs().sum() > 0, (step, name)
        opt.step()

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


def test_clip_embed_copy_and_condition_dropout():
    model = tiny()
    grid, text, tokens, mask = inputs()
    for fusion in (concat_fusion(), cross_fusion(), cross_fusion(lora_rank=None)):
        fusion.load_point_e_clip_embed(model)
        torch.testing.assert_close(fusion.image_embed(grid), model.embed_grid(grid), rtol=0, atol=0)
    with pytest.raises(ValueError, match="clip_embed"):
        CrossAttentionFusion(grid_width=GW + 1, text_width=TW, width=W, heads=2).load_point_e_clip_embed(model)

    # a dropped sample is exactly the unconditional input of sampling (zero tensors; the mask is kept)
    cond = {"grid": grid, "text_tokens": tokens, "text_mask": mask}
    dropped = drop_conditions(cond, 1.0, torch.Generator().manual_seed(0))
    assert torch.all(dropped["grid"] == 0) and torch.all(dropped["text_tokens"] == 0)
    assert dropped["text_mask"] is mask
    assert drop_conditions(cond, 0.0)["grid"] is grid
    big = {"grid": torch.ones(4000, 3), "text_vector": torch.ones(4000, 2, 2)}
    a = drop_conditions(big, 0.3, torch.Generator().manual_seed(1))
    b = drop_conditions(big, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a["grid"], b["grid"])                         # the draws come from the generator
    assert torch.equal(a["grid"][:, 0] == 0, a["text_vector"][:, 0, 0] == 0)    # one draw per sample for all
    assert 0.25 < (a["grid"][:, 0] == 0).float().mean() < 0.35
    with pytest.raises(ValueError, match="text vector"):
        concat_fusion()(grid, tokens)


def test_paper_sizes():
    """Defaults are the paper's: ViT-L/14 grid [B,256,1024], text 768 -> base40M's [B,256,512] condition; LoRA
    rank 8 on the fusion's copy of clip_embed."""
    grid = torch.randn(1, 256, 1024)
    assert ConcatFusion().eval()(grid, F.normalize(torch.randn(1, 768), dim=-1)).shape == (1, 256, 512)
    assert ConcatFusion().image_embed[1].rank == 8
    states, mask = torch.randn(1, 77, 768), torch.arange(77)[None] < 9
    assert CrossAttentionFusion().eval()(grid, states, mask).shape == (1, 256, 512)

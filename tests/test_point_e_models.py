"""Tests for lang3d.models.point_e: Point-E transformers (official layout / checkpoints) and CLIP ViT conditioning.
CPU."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lang3d.models.point_e import (MODEL_CONFIGS, CLIPConditioner, build_model, load_official_checkpoint, qkv_attention,
                                   timestep_embedding)
from lang3d.training.checkpoint import CheckpointMismatchError, check_state_dict

# Point-E parameter counts (point_e.md); uncond and imagevec follow from them (no clip_embed / same as textvec).
REFERENCE_COUNTS = {"base40M": 40_466_956, "base40M-textvec": 40_333_836, "base40M-imagevec": 40_333_836,
                    "base40M-uncond": 40_466_956 - (2 * 1024 + 1024 * 512 + 512), "base300M": 311_778_316,
                    "base1B": 1_244_311_564, "upsample": 40_470_540}
TINY = dict(width=32, layers=2, heads=2)                     # small backbone for behaviour tests
TINY_GRID = dict(grid_tokens=5, grid_width=24)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP constants
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def spec_shapes(kind, width=512, layers=12, grid_width=1024, vector_width=768):
    """State-dict key -> shape written from point_e.md's key list (independent of the model code)."""
    w = width
    s = {"time_embed.c_fc.weight": (4 * w, w), "time_embed.c_fc.bias": (4 * w,),
         "time_embed.c_proj.weight": (w, 4 * w), "time_embed.c_proj.bias": (w,),
         "ln_pre.weight": (w,), "ln_pre.bias": (w,), "ln_post.weight": (w,), "ln_post.bias": (w,),
         "input_proj.weight": (w, 6), "input_proj.bias": (w,), "output_proj.weight": (12, w), "output_proj.bias": (12,)}
    for i in range(layers):
        p = f"backbone.resblocks.{i}."
        s.update({p + "attn.c_qkv.weight": (3 * w, w), p + "attn.c_qkv.bias": (3 * w,),
                  p + "attn.c_proj.weight": (w, w), p + "attn.c_proj.bias": (w,),
                  p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                  p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,),
                  p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)})
    if kind in ("grid", "upsample"):
        s.update({"clip_embed.0.weight": (grid_width,), "clip_embed.0.bias": (grid_width,),
                  "clip_embed.1.weight": (w, grid_width), "clip_embed.1.bias": (w,)})
    if kind == "upsample":
        s.update({"cond_point_proj.weight": (w, 6), "cond_point_proj.bias": (w,),
                  "channel_scales": (6,), "channel_biases": (6,)})
    if kind == "vector":
        s.update({"clip_embed.weight": (w, vector_width), "clip_embed.bias": (w,)})
    return s


def hand_sinusoid(t, dim):
    """[cos(t f_0..f_{h-1}), sin(t f_0..f_{h-1})] with f_i = 10000^(-i/h), in python floats -> float64 tensor."""
    h = dim // 2
    rows = [[math.cos(s * 10000 ** (-i / h)) for i in range(h)] + [math.sin(s * 10000 ** (-i / h)) for i in range(h)]
            + [0.0] * (dim % 2) for s in t.tolist()]
    return torch.tensor(rows, dtype=torch.float64)


def naive_attention(qkv, heads):
    """Per-batch, per-head loop: head h owns columns [h*3c, (h+1)*3c) = q | k | v; q, k scaled by c^-1/4."""
    b, n, width3 = qkv.shape
    c = width3 // 3 // heads
    out = torch.zeros(b, n, heads * c, dtype=qkv.dtype)
    for bi in range(b):
        for h in range(heads):
            block = qkv[bi, :, h * 3 * c:(h + 1) * 3 * c]
            q, k, v = block[:, :c] * c ** -0.25, block[:, c:2 * c] * c ** -0.25, block[:, 2 * c:]
            logits = q @ k.T
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            out[bi, :, h * c:(h + 1) * c] = (weights / weights.sum(dim=1, keepdim=True)) @ v
    return out


def reference_forward(sd, kind, x, t, heads, grid=None, vector=None, low_res=None):
    """Slow float64 Point-E forward written from point_e.md, reading weights by their official names."""
    sd = {k: v.double() for k, v in sd.items()}

    def lin(h, name):
        return h @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(h, name):
        return F.layer_norm(h, h.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])

    width, layers = sd["ln_pre.weight"].shape[0], len({k.split(".")[2] for k in sd if k.startswith("backbone.")})
    sinusoid = timestep_embedding(t, width).double()  # float32 as Point-E; checked against hand_sinusoid below
    time = lin(F.gelu(lin(sinusoid, "time_embed.c_fc")), "time_embed.c_proj")[:, None]
    if kind == "vector":
        tokens = [lin(vector.double() * math.sqrt(vector.shape[1]), "clip_embed")[:, None], time]
    elif kind == "uncond":
        tokens = [time]
    else:
        tokens = [time, lin(ln(grid.double(), "clip_embed.0"), "clip_embed.1")]
    if kind == "upsample":  # xyz * 2, RGB / 127.5 - 1
        scale = torch.tensor([2.0] * 3 + [1 / 127.5] * 3, dtype=torch.float64)[None, :, None]
        shift = torch.tensor([0.0] * 3 + [-1.0] * 3, dtype=torch.float64)[None, :, None]
        tokens.append(lin((low_res.double() * scale + shift).transpose(1, 2), "cond_point_proj"))
    h = ln(torch.cat(tokens + [lin(x.double().transpose(1, 2), "input_proj")], dim=1), "ln_pre")
    for i in range(layers):
        p = f"backbone.resblocks.{i}."
        h = h + lin(naive_attention(lin(ln(h, p + "ln_1"), p + "attn.c_qkv"), heads), p + "attn.c_proj")
        h = h + lin(F.gelu(lin(ln(h, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return lin(ln(h, "ln_post")[:, -x.shape[2]:], "output_proj").transpose(1, 2)


def randomised(model, seed=0):
    """All parameters ~ N(0, 0.3^2) (LN weights around 1), so every path, incl. output_proj, is active."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if name.endswith(("ln_1.weight", "ln_2.weight",
                    "ln_pre.weight", "ln_post.weight", "clip_embed.0.weight")) else 0.0))
    return model.eval()


def tiny_model(name, seed=0, **extra):
    overrides = dict(TINY, **(TINY_GRID if MODEL_CONFIGS[name]["conditioning"].startswith("image_grid") else {}))
    if "vector" in MODEL_CONFIGS[name]["conditioning"]:
        overrides["vector_width"] = 20
    return randomised(build_model(name, **overrides, **extra), seed)


def inputs(b=2, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 6, n, generator=g), torch.randint(0, 1024, (b,), generator=g)


# ---------------------------------------------------------------- configs, state dicts, checkpoints

@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_parameter_counts_and_official_key_layout(name):
    with torch.device("meta"):
        model = build_model(name)
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_COUNTS[name]
    cfg = MODEL_CONFIGS[name]
    kind = {"image_grid": "grid", "image_grid+low_res": "upsample", "none": "uncond"}.get(cfg["conditioning"], "vector")
    spec = spec_shapes(kind, cfg["width"], cfg["layers"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec
    check_state_dict(model, {k: torch.empty(s, device="meta") for k, s in spec.items()})  # no error


def test_hand_built_state_dict_loads_strict_into_base40M(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {k: 0.02 * torch.randn(s, generator=g) for k, s in spec_shapes("grid").items()}
    path = tmp_path / "base_40m.pt"
    torch.save(state, path)
    model = load_official_checkpoint(build_model("base40M"), path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    bad = dict(state, **{"clip_embed.1.weight": torch.zeros(512, 768)})
    with pytest.raises(CheckpointMismatchError, match=r"'clip_embed\.1\.weight': checkpoint \[512, 768\] vs model "
                                                      r"\[512, 1024\]"):
        load_official_checkpoint(model, bad)
    missing = {k: v for k, v in state.items() if k != "ln_post.bias"}
    with pytest.raises(CheckpointMismatchError, match=r"missing tensor 'ln_post\.bias'"):
        load_official_checkpoint(model, missing)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'clip\.proj'"):
        load_official_checkpoint(model, dict(state, **{"clip.proj": torch.zeros(3)}))
    assert torch.equal(model.state_dict()["clip_embed.1.weight"], state["clip_embed.1.weight"])  # untouched


def test_checkpoint_file_errors_name_the_file(tmp_path):
    model = tiny_model("base40M")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model": model.state_dict(), "step": 3}, wrapped)
    with pytest.raises(CheckpointMismatchError, match=r"wrapped\.pt is not a plain dict\[str, Tensor\]"):
        load_official_checkpoint(model, wrapped)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match=r"garbage\.pt is not a readable torch file"):
        load_official_checkpoint(model, garbage)
    with pytest.raises(CheckpointMismatchError, match=r"nope\.pt does not exist"):
        load_official_checkpoint(model, tmp_path / "nope.pt")


@pytest.mark.parametrize("name", ["base40M", "upsample", "base40M-textvec"])
def test_save_load_round_trip_reproduces_outputs(tmp_path, name):
    model = tiny_model(name, seed=1)
    x, t = inputs()
    cond = dict(grid=torch.randn(2, 5, 24)) if name != "base40M-textvec" else dict(vector=torch.randn(2, 20))
    if name == "upsample":
        cond["low_res"] = torch.randn(2, 6, 4)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = load_official_checkpoint(build_model(name, **{k: getattr(model, k) for k in cond_keys(model)}, **TINY),
                                     tmp_path / "m.pt").eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, t, **cond), model(x, t, **cond))


def cond_keys(model):
    return [k for k in ("grid_tokens", "grid_width", "vector_width") if hasattr(model, k)]


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown Point-E model 'base40m'.*base40M"):
        build_model("base40m")
    with pytest.raises(ValueError, match="cond_drop_prob"):
        build_model("base40M", cond_drop_prob=1.5, **TINY)


# ---------------------------------------------------------------- equations

def test_per_head_qkv_attention_matches_naive_loop():
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3 * 4 * 5, dtype=torch.float64)
    ours = qkv_attention(qkv, heads=4)
    torch.testing.assert_close(ours, naive_attention(qkv, 4), rtol=1e-10, atol=1e-10)
    # the layout matters: nn.MultiheadAttention's [Q|K|V] split (same heads) gives something else
    q, k, v = qkv.split(20, dim=-1)
    blocks = torch.cat([torch.cat([q[..., h * 5:(h + 1) * 5], k[..., h * 5:(h + 1) * 5], v[..., h * 5:(h + 1) * 5]],
                                  dim=-1) for h in range(4)], dim=-1)
    assert not torch.allclose(qkv_attention(blocks, 4), ours, atol=1e-3)
    torch.testing.assert_close(qkv_attention(blocks, 4), naive_attention(blocks, 4), rtol=1e-10, atol=1e-10)


def test_timestep_embedding_matches_hand_sinusoid():
    small, large = torch.tensor([0, 1, 3, 17]), torch.tensor([255, 511, 1023])
    for dim in (8, 512, 9):
        torch.testing.assert_close(timestep_embedding(small, dim).double(), hand_sinusoid(small, dim),
                                   rtol=0, atol=3e-6)
        # float32 arguments (as Point-E): |error| <= |t * f| * 2^-23 plus rounding of f
        torch.testing.assert_close(timestep_embedding(large, dim).double(), hand_sinusoid(large, dim),
                                   rtol=0, atol=3e-4)
    assert timestep_embedding(small, 8)[0].tolist() == [1.0] * 4 + [0.0] * 4  # t = 0: cos = 1 first, sin = 0 after


@pytest.mark.parametrize("name", ["base40M", "upsample", "base40M-textvec", "base40M-uncond"])
def test_forward_matches_reference_written_from_spec(name):
    model = tiny_model(name, seed=2).double()
    x, t = inputs(n=6)
    kind = {"base40M": "grid", "upsample": "upsample", "base40M-textvec": "vector", "base40M-uncond": "uncond"}[name]
    cond = {"grid": dict(grid=torch.randn(2, 5, 24)), "vector": dict(vector=F.normalize(torch.randn(2, 20), dim=-1)),
            "upsample": dict(grid=torch.randn(2, 5, 24), low_res=torch.cat([torch.rand(2, 3, 4) - 0.5,
                                                                          255 * torch.rand(2, 3, 4)], dim=1)),
            "uncond": {}}[kind]
    with torch.no_grad():
        ours = model(x.double(), t, **{k: v.double() for k, v in cond.items()})
    ref = reference_forward(model.state_dict(), kind, x, t, heads=2, **cond)
    assert ours.shape == (2, 12, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- token order, conditioning, init

def test_base40M_output_is_zero_at_init_and_grid_matters():
    model = build_model("base40M").eval()
    assert not model.output_proj.weight.any() and not model.output_proj.bias.any()
    x, t = inputs(n=8)
    grid = torch.randn(2, 256, 1024)
    with torch.no_grad():
        assert not model(x, t, grid=grid).any()
        torch.nn.init.normal_(model.output_proj.weight, std=0.1)
        a, b = model(x, t, grid=grid), model(x, t, grid=grid.flip(0))
        single = model(x[:1], t[:1], grid=grid[:1])
    assert a.shape == (2, 12, 8)
    assert not torch.allclose(a, b, atol=1e-4)
    torch.testing.assert_close(single[0], a[0], rtol=1e-4, atol=1e-5)  # samples are independent


def test_outputs_follow_the_point_tokens():
    """Only the last N tokens are read and points have no position: permuting points permutes the output."""
    model = tiny_model("upsample", seed=3)
    x, t = inputs(n=11)
    low_res, grid = torch.randn(2, 6, 4), torch.randn(2, 5, 24)
    perm = torch.randperm(11)
    with torch.no_grad():
        out = model(x, t, low_res=low_res, grid=grid)
        torch.testing.assert_close(model(x[:, :, perm], t, low_res=low_res, grid=grid), out[:, :, perm])
        assert model(x[:, :, :3], t, low_res=low_res, grid=grid).shape == (2, 12, 3)
        torch.testing.assert_close(model(x, t, low_res=low_res), model(x, t, low_res=low_res, grid=0 * grid))
        assert not torch.allclose(model(x, t, low_res=low_res.flip(0), grid=grid), out, atol=1e-4)


@pytest.mark.parametrize("name,key,shape", [("base40M", "grid", (5, 24)), ("upsample", "grid", (5, 24)),
                                            ("base40M-textvec", "vector", (20,))])
def test_cond_drop_in_training_only(name, key, shape):
    model = tiny_model(name, seed=4, cond_drop_prob=1.0)
    x, t = inputs(b=8)
    extra = dict(low_res=torch.randn(8, 6, 4)) if name == "upsample" else {}
    cond = torch.randn(8, *shape)
    with torch.no_grad():
        cond_out = model(x, t, **{key: cond}, **extra)
        zero_out = model(x, t, **{key: torch.zeros_like(cond)}, **extra)
        assert not torch.allclose(cond_out, zero_out, atol=1e-4)            # eval: never dropped
        model.train()
        torch.testing.assert_close(model(x, t, **{key: cond}, **extra), zero_out)  # p = 1: always dropped
        model.cond_drop_prob = 0.5
        torch.manual_seed(0)
        mixed = model(x, t, **{key: cond}, **extra)
    dropped = [torch.allclose(mixed[i], zero_out[i], atol=1e-5) for i in range(8)]
    kept = [torch.allclose(mixed[i], cond_out[i], atol=1e-5) for i in range(8)]
    assert all(d != k for d, k in zip(dropped, kept)) and 0 < sum(dropped) < 8   # per sample, both happen


def test_bad_inputs_raise_clear_errors():
    model = tiny_model("base40M")
    x, t = inputs()
    with pytest.raises(ValueError, match=r"x must be float \[B, 6, N\]"):
        model(x[:, :3], t, grid=torch.zeros(2, 5, 24))
    with pytest.raises(ValueError, match=r"t must be \[B\] = \[2\]"):
        model(x, t[:1], grid=torch.zeros(2, 5, 24))
    with pytest.raises(ValueError, match=r"grid must be \[B, grid_tokens, grid_width\] = \[2, 5, 24\]"):
        model(x, t, grid=torch.zeros(2, 24, 5))
    with pytest.raises(ValueError, match=r"vector must be \[B, 20\]"):
        tiny_model("base40M-textvec")(x, t, vector=torch.zeros(2, 21))
    with pytest.raises(ValueError, match=r"low_res must be \[B, 6, M\]"):
        tiny_model("upsample")(x, t, low_res=torch.zeros(2, 3, 4))


# ---------------------------------------------------------------- CLIP conditioning (tiny ViT)

@pytest.fixture(scope="module")
def conditioner():
    torch.manual_seed(0)
    cond = CLIPConditioner.load("lang3d-tiny-ViT", None)
    with torch.no_grad():  # non-trivial LayerNorms, so that applying ln_pre / ln_post is visible
        for m in cond.model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    return cond


def test_grid_equals_open_clip_modules_by_hand(conditioner):
    v = conditioner.model.visual
    assert (conditioner.grid_tokens, conditioner.grid_width, conditioner.vector_width) == (16, 32, 16)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    pixels = (images - CLIP_MEAN) / CLIP_STD
    torch.testing.assert_close(conditioner.preprocess(images), pixels)
    with torch.no_grad():
        h = v.conv1(pixels)                                                  # [B, 32, 4, 4]
        h = h.reshape(3, 32, 16).permute(0, 2, 1)
        h = torch.cat([v.class_embedding.view(1, 1, 32).repeat(3, 1, 1), h], dim=1) + v.positional_embedding
        h = v.ln_pre(h)
        for block in v.transformer.resblocks:
            h = block(h)
        expected = h[:, 1:]
        grid = conditioner.embed_images_grid(images)
        assert grid.shape == (3, 16, 32)
        torch.testing.assert_close(grid, expected)
        assert not torch.allclose(grid, v.ln_post(expected), atol=1e-3)      # no ln_post (and no proj: width 32)


def test_vectors_are_unit_norm_open_clip_embeddings(conditioner):
    texts = ["a red chair", "a corgi", "a very long description " * 30]    # the last one is truncated
    vec = conditioner.embed_text(texts)
    model = conditioner.model
    with torch.no_grad():
        ref = model.encode_text(conditioner.tokenizer(texts))
    torch.testing.assert_close(vec, ref / ref.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(vec.norm(dim=-1), torch.ones(3))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = model.encode_image((images - CLIP_MEAN) / CLIP_STD)
    img = conditioner.embed_images(images)
    torch.testing.assert_close(img, ref / ref.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))


def test_preprocessing_resizes_shorter_side_and_centre_crops(conditioner):
    rgb = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)          # H 64, W 96
    resized = Image.fromarray(rgb).resize((48, 32), Image.BICUBIC)                       # shorter side -> 32
    crop = torch.from_numpy(np.asarray(resized)[:, 8:40].astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = (crop - CLIP_MEAN) / CLIP_STD
    torch.testing.assert_close(conditioner.preprocess([rgb]), expected)
    torch.testing.assert_close(conditioner.preprocess([Image.fromarray(rgb)]), expected)
    with pytest.raises(ValueError, match=r"float \[B,3,H,W\]"):
        conditioner.preprocess(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="non-empty sequence of strings"):
        conditioner.embed_text("a chair")


def test_conditioner_is_frozen_and_feeds_the_models(conditioner):
    conditioner.train()
    assert not conditioner.model.training and not any(p.requires_grad for p in conditioner.parameters())
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    grid_model = randomised(build_model("base40M", **TINY, grid_tokens=conditioner.grid_tokens,
                                        grid_width=conditioner.grid_width))
    vec_model = randomised(build_model("base40M-textvec", **TINY, vector_width=conditioner.vector_width))
    x, t = inputs()
    with torch.no_grad():
        assert grid_model(x, t, grid=conditioner.embed_images_grid(images)).shape == (2, 12, 7)
        assert vec_model(x, t, vector=conditioner.embed_text(["a", "b"])).shape == (2, 12, 7)
    with pytest.raises(TypeError, match="ViT with a class token"):
        CLIPConditioner.load("lang3d-tiny-RN", None)


def test_text_token_states_end_in_the_text_vector(conditioner):
    texts = ["a red chair", "a small wooden table with four legs"]
    states, mask = conditioner.embed_text_tokens(texts)
    assert states.shape[:2] == mask.shape and states.shape[-1] == conditioner.vector_width
    lengths = mask.sum(1)
    assert lengths[1] > lengths[0] and bool(mask[:, 0].all())
    eot = states[torch.arange(2), lengths - 1]
    torch.testing.assert_close(torch.nn.functional.normalize(eot, dim=-1), conditioner.embed_text(texts),
                               rtol=1e-5, atol=1e-6)

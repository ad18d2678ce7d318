"""Tests for lang3d.models.clip: loading, dense CLIP features (Text4Point Eq. 1), text embeddings. Tiny model, CPU."""
import copy
import json
import math
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from lang3d.models.clip import (CONFIG_DIR, PRETRAINED_TAGS, CLIPDenseImageEncoder, CLIPLoadError, CLIPTextEncoder,
                                CLIPWeightsFileError, CLIPWeightsUnavailable, class_prompts, download_lock,
                                interpolate_grid_pos_embed, load_clip, register_model_configs)

TINY = "lang3d-tiny-RN"
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP constants
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def _randomise_bn(model):
    """Random BatchNorm affine params (open_clip zero-inits bn3) and running statistics calibrated on random
    images, so that trunk features depend on the input (default stats let the signal vanish)."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.weight.data = 0.5 + torch.rand(m.num_features, generator=g)
        m.bias.data = 0.1 * torch.randn(m.num_features, generator=g)
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the calibration pass
    model.visual.train()
    with torch.no_grad():
        model.visual((_images(64, 64, b=8, seed=11) - MEAN) / STD)
    model.eval()
    for m in bns:
        m.momentum = 0.1


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tokenizer = load_clip(TINY, None)
    _randomise_bn(model)
    return model, tokenizer


def _images(h, w, b=2, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _trunk_open_clip(model, images):
    """open_clip's own trunk path on normalised images -> [B,C,h,w]."""
    out = model.visual.forward_intermediates((images - MEAN) / STD, intermediates_only=True)
    return out["image_intermediates"][-1]


def _interp_pos(pos, h, w):
    """Independent bicubic resize of the spatial positional embedding (global token kept)."""
    g = int(math.isqrt(pos.shape[0] - 1))
    grid = pos[1:].T.reshape(1, -1, g, g)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.reshape(pos.shape[1], h * w).T], dim=0)


def _hand_attention(feat, pool, pos, query_index):
    """Slow reference of one attention-pool output: token `query_index` attends to all tokens. float64.

    feat [C,h,w] trunk features of one image; returns [d].
    """
    c = feat.shape[0]
    tokens = [feat.double().mean(dim=(1, 2))] + [feat[:, i, j].double()
                                                  for i in range(feat.shape[1]) for j in range(feat.shape[2])]
    tokens = [t + p for t, p in zip(tokens, pos.double())]
    heads, dh = pool.num_heads, c // pool.num_heads
    wq, wk, wv = (getattr(pool, n).weight.double() for n in ("q_proj", "k_proj", "v_proj"))
    bq, bk, bv = (getattr(pool, n).bias.double() for n in ("q_proj", "k_proj", "v_proj"))
    q = wq @ tokens[query_index] + bq
    keys = [wk @ t + bk for t in tokens]
    values = [wv @ t + bv for t in tokens]
    out = torch.zeros(c, dtype=torch.float64)
    for hd in range(heads):
        s = slice(hd * dh, (hd + 1) * dh)
        scores = torch.tensor([float(q[s] @ k[s]) / math.sqrt(dh) for k in keys], dtype=torch.float64)
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        out[s] = sum(wgt * v[s] for wgt, v in zip(weights, values))
    return pool.c_proj.weight.double() @ out + pool.c_proj.bias.double()


def test_tiny_config_registered():
    register_model_configs()
    assert TINY in open_clip.list_models()
    cfg = json.loads((CONFIG_DIR / f"{TINY}.json").read_text())
    assert cfg["embed_dim"] == 32 and cfg["vision_cfg"]["layers"] == [1, 1, 1, 1]
    assert open_clip.get_model_config(TINY)["text_cfg"]["width"] == 32


def test_native_size_global_equals_open_clip(tiny):
    model, _ = tiny
    enc = CLIPDenseImageEncoder(model)
    images = _images(64, 64)
    out = enc(images)
    assert enc.output_stride == 32 and enc.embed_dim == 32
    assert out["dense"].shape == (2, 32, 2, 2) and out["global_"].shape == (2, 32)
    ref = model.visual((images - MEAN) / STD)
    torch.testing.assert_close(out["global_"], ref, atol=1e-5, rtol=1e-5)
    feat = _trunk_open_clip(model, images)
    pos = model.visual.attnpool.positional_embedding
    for b, idx in [(0, 1), (1, 3), (1, 4)]:   # token idx-1 = row (idx-1)//2, col (idx-1)%2
        r, c = divmod(idx - 1, 2)
        expect = _hand_attention(feat[b], model.visual.attnpool, pos, idx).float()
        torch.testing.assert_close(out["dense"][b, :, r, c], expect, atol=1e-5, rtol=1e-5)


def test_non_native_size_uses_interpolated_pos_embed(tiny):
    model, _ = tiny
    enc = CLIPDenseImageEncoder(model)
    images = _images(240, 320, b=1, seed=3)
    out = enc(images)
    feat = _trunk_open_clip(model, images)
    h, w = feat.shape[-2:]
    assert (h, w) == (7, 10) and out["dense"].shape == (1, 32, 7, 10)
    pos = _interp_pos(model.visual.attnpool.positional_embedding, h, w)
    pool = copy.deepcopy(model.visual.attnpool)   # open_clip's own pooling with the resized embedding
    pool.positional_embedding = torch.nn.Parameter(pos)
    torch.testing.assert_close(out["global_"], pool(feat), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["global_"][0], _hand_attention(feat[0], pool, pos, 0).float(),
                               atol=1e-5, rtol=1e-5)
    for r, c in [(0, 0), (3, 7), (6, 9)]:
        expect = _hand_attention(feat[0], pool, pos, 1 + r * w + c).float()
        torch.testing.assert_close(out["dense"][0, :, r, c], expect, atol=1e-5, rtol=1e-5)


def test_interpolate_pos_embed():
    pos = torch.randn(1 + 7 * 7, 16)
    assert interpolate_grid_pos_embed(pos, 7, 7) is pos
    out = interpolate_grid_pos_embed(pos, 8, 10)
    assert out.shape == (81, 16)
    torch.testing.assert_close(out, _interp_pos(pos, 8, 10))
    torch.testing.assert_close(out[0], pos[0])
    with pytest.raises(ValueError, match="square"):
        interpolate_grid_pos_embed(torch.randn(1 + 6, 4), 2, 3)


def test_dense_encoder_is_frozen(tiny):
    model, _ = tiny
    enc = CLIPDenseImageEncoder(model)
    assert not any(p.requires_grad for p in model.parameters())
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())
    bn = enc.visual.bn1
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    out = enc(_images(64, 96, seed=5) * 3.0)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert torch.equal(bn.num_batches_tracked, before[2])
    assert out["dense"].grad_fn is None and not out["dense"].requires_grad


def test_dense_encoder_rejects_bad_input(tiny):
    enc = CLIPDenseImageEncoder(tiny[0])
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        enc(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="at least 32"):
        enc(torch.rand(1, 3, 16, 64))


def test_dense_encoder_needs_resnet():
    vit = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, patch_size=16, width=32, layers=1,
                                                       head_width=16),
                         text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
    with pytest.raises(TypeError, match="ModifiedResNet"):
        CLIPDenseImageEncoder(vit)


def test_text_encoder_matches_encode_text(tiny):
    model, tokenizer = tiny
    enc = CLIPTextEncoder(model, tokenizer)
    prompts = class_prompts(["chair", "table", "bookshelf"])
    assert prompts[0] == "point cloud of chair."
    tokens = tokenizer(prompts)
    ref = model.encode_text(tokens)
    emb = enc.encode_token_embeddings(model.token_embedding(tokens), enc.eot_index(tokens))
    torch.testing.assert_close(emb, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(enc(prompts), ref, atol=1e-6, rtol=1e-6)
    assert enc(prompts).shape == (3, enc.embed_dim) == (3, 32)
    # prompt learning: gradients reach the token embeddings through the frozen transformer
    x = model.token_embedding(tokens).clone().requires_grad_(True)
    enc.encode_token_embeddings(x, enc.eot_index(tokens)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    enc.train()
    assert not enc.training
    with pytest.raises(ValueError, match="template"):
        class_prompts(["chair"], template="no slot")


def _outputs(model, tokenizer):
    images = _images(96, 128, seed=7)
    dense = CLIPDenseImageEncoder(model)(images)
    return dense["dense"], CLIPTextEncoder(model, tokenizer)(["point cloud of sofa."])


@pytest.mark.filterwarnings("ignore:.*torch.jit:FutureWarning")
def test_local_file_round_trip(tiny, tmp_path):
    model, tokenizer = tiny
    plain = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), plain)
    ckpt = tmp_path / "tiny_ckpt.pt"   # open_clip training checkpoint layout (DDP 'module.' prefix)
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, ckpt)
    script = tmp_path / "tiny_jit.pt"  # TorchScript archive, like OpenAI's own RN50.pt
    torch.jit.script(model).save(str(script))
    expect = _outputs(model, tokenizer)
    for path in (plain, ckpt, script):
        loaded, tok = load_clip(TINY, str(path))
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        for a, b in zip(_outputs(loaded, tok), expect):
            assert torch.equal(a, b), path


def test_bad_local_files(tiny, tmp_path):
    model, _ = tiny
    missing = tmp_path / "nope" / "RN50.pt"
    with pytest.raises(CLIPWeightsFileError, match="nope/RN50.pt.*does not exist"):
        load_clip(TINY, str(missing))
    wrong = tmp_path / "wrong.pt"
    state = {k: v for k, v in model.state_dict().items() if "attnpool" not in k}
    torch.save(state, wrong)
    with pytest.raises(CLIPWeightsFileError, match=r"wrong\.pt.*lang3d-tiny-RN"):
        load_clip(TINY, str(wrong))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CLIPWeightsFileError, match=r"garbage\.bin"):
        load_clip(TINY, str(garbage))


def test_unknown_model_and_tag():
    with pytest.raises(CLIPLoadError, match="Available:.*RN50.*lang3d-tiny-RN|Available:.*lang3d-tiny-RN.*RN50"):
        load_clip("no-such-model", None)
    with pytest.raises(CLIPLoadError, match="tags:.*openai"):
        load_clip("RN50", "no_such_tag")


def test_tag_unavailable_offline_is_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CLIPWeightsUnavailable) as err:
        load_clip("RN50", "openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5.0
    msg = str(err.value)
    for part in ("'RN50'", "'openai'", str(tmp_path), "timm/resnet50_clip.openai", "pretrained: /path/to/RN50.pt"):
        assert part in msg, part


def test_tag_found_in_local_caches(tiny, tmp_path, monkeypatch):
    """A registered tag whose weights are already cached (HF hub layout or URL cache) loads without network."""
    model, tokenizer = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "models--lang3d--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (tmp_path / "models--lang3d--tiny" / "refs").mkdir()
    (tmp_path / "models--lang3d--tiny" / "refs" / "main").write_text("abc123")
    torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    torch.save(model.state_dict(), tmp_path / "tiny-url.pt")
    tags = {"hubtag": dict(hf_hub="lang3d/tiny/", quick_gelu=False),
            "urltag": dict(url="https://example.invalid/weights/tiny-url.pt", quick_gelu=True)}
    monkeypatch.setitem(PRETRAINED_TAGS, TINY, tags)
    expect = _outputs(model, tokenizer)
    loaded, tok = load_clip(TINY, "hubtag", cache_dir=str(tmp_path))
    for a, b in zip(_outputs(loaded, tok), expect):
        assert torch.equal(a, b)
    loaded, _ = load_clip(TINY, "urltag", cache_dir=str(tmp_path))
    assert isinstance(loaded.transformer.resblocks[0].mlp.gelu, QuickGELU)   # activation follows the tag
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


URL_TAG = {"urltag": dict(url="https://example.invalid/weights/tiny-url.pt", quick_gelu=True)}


def _hold_lock(cache_dir, barrier, times):
    """Run by two processes at once (after the barrier): hold the download lock of RN50/openai for 0.4 s and
    record when."""
    barrier.wait(timeout=60)
    with download_lock("RN50", "openai", cache_dir):
        start = time.time()
        time.sleep(0.4)
        times.put((start, time.time()))


def test_download_lock_serialises_processes(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, times = ctx.Barrier(2), ctx.Queue()
    other = ctx.Process(target=_hold_lock, args=(str(tmp_path), barrier, times))
    other.start()
    _hold_lock(str(tmp_path), barrier, times)
    (a_start, a_end), (b_start, b_end) = sorted(times.get(timeout=60) for _ in range(2))
    other.join(timeout=60)
    assert other.exitcode == 0
    assert a_end <= b_start, "both processes held the download lock at the same time"
    assert list(tmp_path.glob("*.lock")) == [tmp_path / "lang3d-clip-RN50-openai.lock"]


def _load_url_tag(cache_dir, started, result):
    """A second process loading the tag while the first still 'downloads' it (holds the lock): offline, it can
    only succeed by waiting for the lock and then reading the cache."""
    PRETRAINED_TAGS[TINY] = URL_TAG
    started.set()
    try:
        model, _ = load_clip(TINY, "urltag", cache_dir=cache_dir)
        result.put(("ok", time.time(), {k: v.sum().item() for k, v in model.state_dict().items()}))
    except Exception as e:  # reported to the test process
        result.put(("error", time.time(), repr(e)))


def test_a_waiting_process_reads_what_the_downloader_cached(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    monkeypatch.setitem(PRETRAINED_TAGS, TINY, URL_TAG)
    ctx = torch.multiprocessing.get_context("spawn")
    started, result = ctx.Event(), ctx.Queue()
    with download_lock(TINY, "urltag", str(tmp_path)):   # this process is the downloader
        other = ctx.Process(target=_load_url_tag, args=(str(tmp_path), started, result))
        other.start()
        assert started.wait(timeout=60)
        time.sleep(1.0)                                    # the other process is now waiting for the lock
        torch.save(model.state_dict(), tmp_path / "download.tmp")
        (tmp_path / "download.tmp").rename(tmp_path / "tiny-url.pt")
        released = time.time()
    status, finished, payload = result.get(timeout=60)
    other.join(timeout=60)
    assert status == "ok", payload
    assert finished >= released
    assert payload == {k: v.sum().item() for k, v in model.state_dict().items()}

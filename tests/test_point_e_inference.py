"""Point-E's inference path (no autograd: the residual stream updated in place, ``ResidualAttentionBlock.update_``)
against the autograd path, which is the plain ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` of the official code,
at base40M's real size; the caller's tensor stays untouched; autocast keeps the plain path."""
import torch

from lang3d.models.point_e.models import build_model


def _live_model(name, **overrides):
    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    torch.nn.init.normal_(model.output_proj.weight, std=0.02)   # zero-initialised as in Point-E
    return model


def test_inference_path_matches_autograd_path_at_base40M_size():
    model = _live_model("base40M")
    g = torch.Generator().manual_seed(1)
    x, t, grid = torch.randn(2, 6, 1024, generator=g), torch.tensor([3, 900]), torch.randn(2, 256, 1024, generator=g)
    plain = model(x, t, grid=grid)                       # grad mode: the block-by-block path
    assert plain.requires_grad
    with torch.no_grad():
        fast = model(x, t, grid=grid)
    assert fast.shape == (2, 12, 1024)
    assert (fast - plain.detach()).abs().max() < 1e-4
    assert (fast - plain.detach()).norm() / plain.detach().norm() < 1e-5


def test_inference_path_leaves_the_input_alone_and_each_block_matches():
    model = _live_model("base40M-uncond", width=64, layers=3, heads=4)
    h = torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(2))
    before = h.clone()
    with torch.no_grad():
        out = model.backbone(h)
        block = model.backbone.resblocks[0]
        stream = h.clone()
        assert block.update_(stream) is stream
        torch.testing.assert_close(stream, block(h), rtol=1e-5, atol=1e-5)
    assert torch.equal(h, before)
    torch.testing.assert_close(out, model.backbone.resblocks[2](model.backbone.resblocks[1](block(h))).detach(),
                               rtol=1e-5, atol=1e-5)


def test_mlp_blocks_cover_every_token_once(monkeypatch):
    """Blocks of 7 tokens over 50 tokens × 2 clouds (a ragged last block) give the unblocked result."""
    from lang3d.models.point_e import transformer

    model = _live_model("base40M-uncond", width=32, layers=2, heads=4)
    h = torch.randn(2, 50, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model.backbone(h)
        monkeypatch.setattr(transformer, "MLP_BLOCK_FLOATS", 7 * 128)
        blocked = model.backbone(h)
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blocked, model.backbone.resblocks[1](model.backbone.resblocks[0](h)).detach(),
                               rtol=1e-5, atol=1e-5)


def test_autocast_keeps_the_plain_path():
    model = _live_model("base40M-uncond", width=64, layers=2, heads=4)
    x, t = torch.randn(1, 6, 40), torch.tensor([10])
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, t)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).norm() / ref.norm() < 5e-2

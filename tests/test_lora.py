"""Tests for lang3d.models.lora: LoRALinear's equations and wrapping Point-E's backbone by name. CPU, tiny."""
import copy

import pytest
import torch
from torch import nn

from lang3d.models.lora import POINT_E_LORA_TARGETS, LoRALinear, apply_lora, load_base_weights, lora_tensor_names
from lang3d.models.point_e import build_model
from lang3d.training.checkpoint import CheckpointMismatchError

TINY = dict(width=32, layers=2, heads=2, grid_tokens=5, grid_width=24)


def tiny_model(seed=0):
    """Tiny base40M with a random (not zero) output_proj, so outputs depend on every layer."""
    torch.manual_seed(seed)
    model = build_model("base40M", **TINY).eval()
    nn.init.normal_(model.output_proj.weight, std=0.1)
    return model


def model_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 6, 7, generator=g), torch.tensor([3, 900]), torch.randn(2, 5, 24, generator=g))


def test_lora_linear_starts_equal_to_base_and_only_a_b_learn():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    reference = copy.deepcopy(base)
    layer = LoRALinear(base, rank=4, alpha=8.0)
    x = torch.randn(3, 5, 10)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=0)
    assert layer.lora_B.abs().sum() == 0 and layer.lora_A.abs().sum() > 0
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]

    nn.init.normal_(layer.lora_B)          # so A gets a gradient too
    layer(x).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


def test_merged_weight_matches_forward_and_scaling():
    torch.manual_seed(1)
    base = nn.Linear(9, 7)
    w0, b0 = base.weight.detach().clone().double(), base.bias.detach().clone().double()
    layer = LoRALinear(base, rank=3, alpha=12.0, dropout=0.5).double().eval()   # eval: dropout off
    nn.init.normal_(layer.lora_B)
    a, b = layer.lora_A.detach(), layer.lora_B.detach()
    expected_w = w0 + 4.0 * b @ a                                     # alpha / rank = 12 / 3
    torch.testing.assert_close(layer.merged_weight().detach(), expected_w)
    x = torch.randn(4, 9, dtype=torch.float64)
    by_hand = torch.stack([expected_w @ row + b0 for row in x])
    torch.testing.assert_close(layer(x).detach(), by_hand)
    assert LoRALinear(nn.Linear(9, 7), rank=3).scaling == 1.0         # alpha defaults to rank


def test_lora_linear_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 3), rank=4)
    with pytest.raises(ValueError, match="dropout"):
        LoRALinear(nn.Linear(4, 3), rank=2, dropout=1.0)


def test_apply_lora_on_point_e_backbone_replaces_exactly_the_targets():
    model = tiny_model()
    x, t, grid = model_inputs()
    before = model(x, t, grid=grid)
    names = apply_lora(model.backbone, POINT_E_LORA_TARGETS, rank=4, alpha=4.0)
    expected = [f"resblocks.{i}.{n}" for i in range(2) for n in ("attn.c_qkv", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert names == expected
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted("backbone." + n for n in expected)          # time_embed.c_fc/c_proj untouched
    assert isinstance(model.time_embed.c_fc, nn.Linear) and isinstance(model.clip_embed[1], nn.Linear)
    torch.testing.assert_close(model(x, t, grid=grid), before, rtol=0, atol=0)

    nn.init.normal_(model.backbone.resblocks[1].mlp.c_fc.lora_B, std=0.1)  # the update reaches the output
    assert not torch.allclose(model(x, t, grid=grid), before, atol=1e-4)


def test_apply_lora_by_predicate_and_errors():
    model = tiny_model()
    names = apply_lora(model, predicate=lambda name, m: name.startswith("backbone.resblocks.1."), rank=2)
    assert names == [f"backbone.resblocks.1.{n}" for n in ("attn.c_qkv", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(model, ["does_not_exist"])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        apply_lora(model, ["ln_1"])
    with pytest.raises(ValueError, match="exactly one"):
        apply_lora(model, ["c_qkv"], predicate=lambda n, m: True)
    assert apply_lora(model, ["attn.c_qkv"]) == ["backbone.resblocks.0.attn.c_qkv"]   # wrapped ones are skipped


def test_official_state_dict_loads_before_or_after_wrapping():
    official = tiny_model(seed=3).state_dict()      # stands for base_40m.pt: same names, no LoRA tensors
    x, t, grid = model_inputs()
    reference = tiny_model(seed=3)
    expected = reference(x, t, grid=grid)

    after = tiny_model(seed=4)
    apply_lora(after.backbone, POINT_E_LORA_TARGETS)
    lora_names = lora_tensor_names(after)
    assert len(lora_names) == 16 and all(n.startswith("backbone.resblocks.") for n in lora_names)
    assert set(after.state_dict()) == set(official) | set(lora_names)   # base tensors keep their names
    load_base_weights(after, official, "base_40m.pt")
    torch.testing.assert_close(after(x, t, grid=grid), expected, rtol=0, atol=0)

    before = tiny_model(seed=4)
    before.load_state_dict(official, strict=True)
    apply_lora(before.backbone, POINT_E_LORA_TARGETS)
    torch.testing.assert_close(before(x, t, grid=grid), expected, rtol=0, atol=0)

    partial = {k: v for k, v in official.items() if k != "ln_post.weight"}
    with pytest.raises(CheckpointMismatchError, match=r"base_40m.pt.*missing tensor 'ln_post.weight'"):
        load_base_weights(after, partial, "base_40m.pt")
    with pytest.raises(CheckpointMismatchError, match="LoRA tensor"):
        load_base_weights(after, after.state_dict())

"""LoRA (Hu et al. 2021): a frozen ``nn.Linear`` plus a trainable low-rank update, and wrapping layers by name.

``LoRALinear`` keeps the wrapped layer's tensors under their own names (``<name>.weight``, ``<name>.bias``) and
adds ``<name>.lora_A`` / ``<name>.lora_B``. So a checkpoint written without LoRA (e.g. Point-E's ``base_40m.pt``)
loads into a wrapped model in either order:

- before wrapping: ``load_official_checkpoint(model, path)`` then ``apply_lora(model.backbone, ...)``;
- after wrapping: ``load_base_weights(model, state)``, which accepts exactly the LoRA tensors as missing.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lang3d.training.checkpoint import check_state_dict

# Point-E's transformer blocks (lang3d.models.point_e.transformer): attention and MLP projections, not time_embed.
POINT_E_LORA_TARGETS = ("attn.c_qkv", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    """``y = x W^T + b + (alpha / rank) · dropout(x) A^T B^T`` with W, b frozen (taken from ``base``).

    A [rank, in] ~ Kaiming-uniform, B [out, rank] = 0, so the layer starts equal to ``base``. ``alpha`` defaults
    to ``rank`` (scale 1, Hu et al.'s choice of setting alpha to the first rank tried). Input [..., in] ->
    [..., out].
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float | None = None, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not 0 < rank <= min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank must be in [1, min(in, out) = {min(base.in_features, base.out_features)}], "
                             f"got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scaling = self.alpha / rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / rank) · B A`` [out, in]: the weight of the equivalent plain Linear (dropout off)."""
        return self.weight + self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, bias={self.bias is not None}")


def _matches(name: str, targets: Collection[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(module: nn.Module, target_names: Collection[str] | None = None,
               predicate: Callable[[str, nn.Linear], bool] | None = None, rank: int = 8,
               alpha: float | None = None, dropout: float = 0.0) -> list[str]:
    """Replace, in place, the ``nn.Linear`` submodules of ``module`` chosen by name with ``LoRALinear``.

    Give exactly one of ``target_names`` (a submodule is chosen when its dotted name relative to ``module``
    equals an entry or ends with ``"." + entry``, e.g. ``POINT_E_LORA_TARGETS`` on ``model.backbone``) or
    ``predicate(name, linear) -> bool`` (called for every ``nn.Linear``). Returns the replaced names in module
    order. Raises ValueError when nothing matches or a name matches a module that is not an ``nn.Linear``.
    Only the wrapped layers are frozen; freezing the rest of the model is the caller's choice.
    """
    if (target_names is None) == (predicate is None):
        raise ValueError("apply_lora: give exactly one of target_names and predicate")
    if isinstance(target_names, str):
        target_names = (target_names,)
    chosen = []
    for name, sub in module.named_modules():
        if not name or isinstance(sub, LoRALinear):
            continue
        if target_names is not None and _matches(name, target_names):
            if not isinstance(sub, nn.Linear):
                raise ValueError(f"apply_lora: '{name}' matches {list(target_names)} but is a "
                                 f"{type(sub).__name__}, not an nn.Linear")
            chosen.append(name)
        elif predicate is not None and isinstance(sub, nn.Linear) and predicate(name, sub):
            chosen.append(name)
    if not chosen:
        what = f"target names {list(target_names)}" if target_names is not None else "the predicate"
        raise ValueError(f"apply_lora: no nn.Linear of {type(module).__name__} matched {what}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(getattr(parent, child), rank=rank, alpha=alpha, dropout=dropout))
    return chosen


def lora_tensor_names(module: nn.Module) -> list[str]:
    """State-dict names of every LoRA A/B tensor under ``module`` (``'<layer>.lora_A'``, ``'<layer>.lora_B'``)."""
    return [f"{name}.{p}" for name, sub in module.named_modules() if isinstance(sub, LoRALinear)
            for p in ("lora_A", "lora_B")]


def load_base_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Load a checkpoint written without LoRA (e.g. an official Point-E file) into a LoRA-wrapped ``module``.

    Every tensor of ``state`` must exist in ``module`` with the same shape, and every tensor of ``module`` must
    be in ``state`` except the LoRA A/B tensors, which keep their values. Otherwise CheckpointMismatchError names
    ``source`` and each offending tensor.
    """
    lora = lora_tensor_names(module)
    check_state_dict(module, state, source, may_be_missing=lora,
                     refused={k: "a LoRA tensor: load a full checkpoint with load_state_dict" for k in lora})
    module.load_state_dict(dict(state), strict=False)

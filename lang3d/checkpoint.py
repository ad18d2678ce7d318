"""Checkpoints: leaving frozen pretrained weights (CLIP) out of them, and loading pretrained tensors by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


class FrozenWeightsNotSaved:
    """Mixin for LightningModules: tensors under ``frozen_prefixes`` are left out of checkpoints, and loading
    tolerates exactly those being absent (anything else missing or unexpected is still an error)."""

    frozen_prefixes: tuple[str, ...] = ()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self.frozen_prefixes)]:
            del state[key]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(self.frozen_prefixes)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not match {type(self).__name__}: missing {missing[:10]}"
                               f"{' …' if len(missing) > 10 else ''}, unexpected {result.unexpected_keys[:10]}")
        return result


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not fit the module they are loaded into."""


@dataclass
class LoadReport:
    """What ``load_pretrained_weights`` did, tensor name by tensor name (names relative to the module)."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # allowed shape mismatches (e.g. a new task head)
    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint: kept as initialised
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the module

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, names in (("re-initialised (shape differs)", self.reinitialised),
                             ("missing from checkpoint (kept as initialised)", self.missing),
                             ("unused from checkpoint", self.unused)):
            if names:
                lines.append(f"{title}: {len(names)}: " + ", ".join(names[:8]) + (" …" if len(names) > 8 else ""))
        return "\n".join(lines)


def load_pretrained_weights(module: nn.Module, path: str | Path, prefix: str = "",
                            reinit_prefixes: tuple[str, ...] = ()) -> LoadReport:
    """Load the tensors of a Lightning checkpoint (or a plain state dict) whose names start with ``prefix``
    into ``module`` by name (prefix stripped). A shape mismatch is an error unless the tensor's name starts
    with one of ``reinit_prefixes``; a checkpoint sharing no tensor with the module is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist (set model.pretrained, or CKPT=... for make)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointMismatchError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} holds no state dict")
    source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    target = module.state_dict()
    report, to_load = LoadReport(), {}
    for name, tensor in source.items():
        if name not in target:
            report.unused.append(name)
        elif target[name].shape == tensor.shape:
            to_load[name] = tensor
            report.loaded.append(name)
        elif name.startswith(reinit_prefixes):
            report.reinitialised.append(name)
        else:
            raise CheckpointMismatchError(f"{path}: tensor '{prefix}{name}' has shape {tuple(tensor.shape)}, the model "
                                          f"expects {tuple(target[name].shape)}")
    report.missing = [n for n in target if n not in source]
    if not to_load:
        raise CheckpointMismatchError(f"{path}: no tensor under '{prefix}' matches the model "
                                      f"(checkpoint has e.g. {list(state)[:3]})")
    module.load_state_dict(to_load, strict=False)
    return report

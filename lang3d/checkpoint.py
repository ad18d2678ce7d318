"""Checkpoints without frozen pretrained weights (e.g. CLIP): they are reloaded from their source instead."""
from __future__ import annotations

from typing import Any


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

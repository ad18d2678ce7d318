"""How SEPE's metrics hold their networks (CLIP, the evaluation PointNet++): as plain attributes, not sub-modules,
so that they never enter a checkpoint of the module owning the metric; they move to the inputs' device when used."""
from __future__ import annotations

import torch
from torchmetrics import Metric


def hold_network(metric: Metric, name: str, module: torch.nn.Module) -> None:
    object.__setattr__(metric, name, module)   # not a sub-module: no state_dict entries, no .to()


def network_on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return module.to(device) if next(module.parameters()).device != device else module

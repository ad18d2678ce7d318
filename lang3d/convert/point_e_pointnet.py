"""Point-e's P-FID / P-IS evaluation network (``pointnet.pt``; openai/point-e ``point_e/evals``): a PointNet++ SSG
training checkpoint ``{"model_state_dict", ...}`` (the PointNet++ code it comes from also saves the epoch, numpy-scalar
accuracies and the optimizer state), already in the names of ``lang3d.models.point_e.eval_pointnet.PointNet2SSG``.

The same kind reads the project's own training of that network (``python -m sepe.pointcloud_features``: a Lightning
checkpoint, tensors under ``net.``). Nothing is renamed or dropped; only the state dict is taken.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lang3d.convert import CheckpointKind, Conversion, Published, register
from lang3d.training.checkpoint import NUMPY_SCALAR_GLOBALS

KIND = "point-e-pointnet"
MARKER = "sa1.mlp_convs.0.weight"


def _state(raw: Any) -> dict[str, Any] | None:
    """The network's tensors: ``model_state_dict`` (point-e), ``state_dict`` without ``net.`` (Lightning), or None."""
    if not isinstance(raw, Mapping):
        return None
    if isinstance(raw.get("model_state_dict"), Mapping):
        state = dict(raw["model_state_dict"])
    elif isinstance(raw.get("state_dict"), Mapping):
        state = {str(k).removeprefix("net."): v for k, v in raw["state_dict"].items()}
    else:
        return None
    return state if MARKER in state else None


def convert(raw: Mapping[str, Any], source: str) -> Conversion:
    return Conversion(KIND, source, {k: v.clone() for k, v in _state(raw).items()}, meta={"module": "PointNet2SSG"})


register(CheckpointKind(KIND, "point-e's PointNet++ SSG evaluation network (pointnet.pt: model_state_dict), or one "
                              "trained by sepe.pointcloud_features", lambda raw: _state(raw) is not None, convert,
                        NUMPY_SCALAR_GLOBALS),
         Published("point_e_pointnet", KIND, "pointnet.pt",
                   "https://openaipublic.azureedge.net/main/point-e/pointnet.pt"))

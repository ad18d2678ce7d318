"""Point-Bind's released checkpoints (``pointbind_i2pmae.pt``, ``pointbind_pointbert.pt``;
ZiyuGuo99/Point-Bind_Point-LLM): the whole ``POINTBIND.state_dict()``, a plain dict of tensors.

Kept, in ``pointbind.PointBindAlignment``'s names:
- ``point_encoder.*`` -> ``encoder.*`` (I2P-MAE or Point-BERT, recognised from the names; ``point_encoders``);
- ``pc_projection`` [D, 512], applied as ``feat @ W`` -> ``head.proj.weight`` = W^T (a bias-free Linear);
- ``bind.modality_head_point.0.{weight,bias}`` (LayerNorm 512, eps 1e-6) -> ``head.norm.*``;
- ``bind.modality_head_point.2.weight`` [1024, 512] -> ``head.out.weight``;
- ``logit_scale`` -> ``logit_scale.log_scale``.
Dropped: every other ``bind.*`` tensor, ImageBind-Huge's towers (~1.2 B parameters, not read from the file:
it is memory-mapped) and ``bind.modality_postprocessor_point.1.log_logit_scale`` (a fixed scale of exp(0) = 1
after the L2 normalisation, which the project's head ends with).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lang3d.convert import CheckpointKind, Conversion, ConversionError, Published, register, rename
from lang3d.convert.point_encoders import i2pmae_rules, pointbert_rules

ENCODER_MARKERS = {"i2pmae": "point_encoder.h_encoder.", "pointbert": "point_encoder.encoder.first_conv."}
HEAD_RULES = [(r"bind\.modality_head_point\.0\.(weight|bias)", r"head.norm.\1"),
              (r"bind\.modality_head_point\.2\.weight", r"head.out.weight"),
              (r"logit_scale", r"logit_scale.log_scale")]


def _is_release(raw: Any) -> bool:
    return isinstance(raw, Mapping) and "pc_projection" in raw and any(str(k).startswith("point_encoder.") for k in raw)


def released_encoder(state: Mapping[str, Any], source: str) -> str:
    """Which 3D encoder a release holds: "i2pmae" or "pointbert" (from its tensor names)."""
    found = [name for name, marker in ENCODER_MARKERS.items() if any(k.startswith(marker) for k in state)]
    if len(found) != 1:
        raise ConversionError(f"{source}: cannot tell the 3D encoder from the tensor names (expected names under "
                              f"{' or '.join(ENCODER_MARKERS.values())})")
    return found[0]


def convert_release(raw: Mapping[str, torch.Tensor], source: str) -> Conversion:
    encoder = released_encoder(raw, source)
    encoder_rules = (i2pmae_rules if encoder == "i2pmae" else pointbert_rules)("point_encoder.", "encoder.")
    state = {k: v for k, v in raw.items() if k != "pc_projection"}
    kept, dropped = rename(state, encoder_rules + HEAD_RULES, source,
                           drop=lambda k: k.startswith("bind.") and not k.startswith("bind.modality_head_point."))
    projection = raw["pc_projection"]
    if projection.dim() != 2:
        raise ConversionError(f"{source}: pc_projection has shape {tuple(projection.shape)}, expected [D, 512]")
    kept["head.proj.weight"] = projection.t().contiguous()
    missing = [k for k in ("head.norm.weight", "head.norm.bias", "head.out.weight", "logit_scale.log_scale")
               if k not in kept]
    if missing:
        raise ConversionError(f"{source}: no tensors for {missing} (bind.modality_head_point.*, logit_scale)")
    return Conversion("pointbind", source, kept, dropped, meta={"encoder": encoder})


KIND = register(
    CheckpointKind("pointbind", "a released Point-Bind model (POINTBIND.state_dict(): 3D encoder, projection, "
                   "ImageBind-Huge)", _is_release, convert_release),
    Published("pointbind_i2pmae", "pointbind", "pointbind_i2pmae.pt",
              "https://drive.google.com/file/d/1V9y3h9EPlPN_HzU7zeeZ6xBOcvU-Xj6h/view"),
    Published("pointbind_pointbert", "pointbind", "pointbind_pointbert.pt",
              "https://drive.google.com/file/d/1BILH_aAGYuZOxvom8V9-n2fYW7nLGcai/view"))

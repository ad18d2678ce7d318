"""I2P-MAE's pre-training checkpoint (``pre-train.pth``; ZrrSkywalker/I2P-MAE): ``{"base_model": state of the
I2P_MAE pre-training model, "optimizer", "epoch", "metrics", "best_metrics"}`` (metrics may hold numpy scalars).

Kept: the hierarchical encoder ``h_encoder.{token_embed,encoder_pos_embeds,encoder_blocks}.*`` -> ``encoder.*``
(``pointbind.encoders.I2PMAEEncoder``), as the official fine-tuning loads it. Dropped: the decoder, the
reconstruction heads, the mask token, the per-stage ``h_encoder.encoder_norms`` (pre-training only), the frozen
CLIP and anything else. Not in the file: the encoder's final ``norm`` (new in fine-tuning; official code keeps it
as initialised too). A leading ``module.`` (DataParallel) is removed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lang3d.convert import CheckpointKind, Conversion, Published, register, rename
from lang3d.convert.point_encoders import i2pmae_rules
from lang3d.training.checkpoint import NUMPY_SCALAR_GLOBALS

KEPT_PREFIXES = ("h_encoder.token_embed.", "h_encoder.encoder_pos_embeds.", "h_encoder.encoder_blocks.")


def model_state(raw: Mapping[str, Any], key: str = "base_model") -> dict[str, Any]:
    """The model's state dict of a training checkpoint, without DataParallel's ``module.`` prefix."""
    return {k.removeprefix("module."): v for k, v in raw[key].items()}


def _is_pretrain(raw: Any) -> bool:
    return (isinstance(raw, Mapping) and isinstance(raw.get("base_model"), Mapping)
            and any(k.removeprefix("module.").startswith("h_encoder.token_embed.") for k in raw["base_model"]))


def convert_pretrain(raw: Mapping[str, Any], source: str) -> Conversion:
    kept, dropped = rename(model_state(raw), i2pmae_rules(target="encoder.", with_norm=False), source,
                           drop=lambda k: not k.startswith(KEPT_PREFIXES))
    return Conversion("i2pmae-pretrain", source, kept, dropped, ["encoder.norm.weight", "encoder.norm.bias"],
                      meta={"encoder": "i2pmae"})


KIND = register(
    CheckpointKind("i2pmae-pretrain", "I2P-MAE's pre-training checkpoint (base_model: hierarchical encoder and "
                   "decoder)", _is_pretrain, convert_pretrain, NUMPY_SCALAR_GLOBALS),
    Published("i2pmae_pretrain", "i2pmae-pretrain", "pre-train.pth",
              "https://drive.google.com/file/d/1TYKHdLwu9DKLgsnvsY4fpgpNowCHErFZ/view"))

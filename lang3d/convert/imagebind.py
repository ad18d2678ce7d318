"""ImageBind-Huge's towers (facebookresearch/ImageBind ``ImageBindModel``): ImageBind's own ``imagebind_huge.pth``,
or the ``bind.*`` tensors of a released Point-Bind file (``pointbind_i2pmae.pt`` / ``pointbind_pointbert.pt``), which
hold the same model under that prefix.

Kept, in ``lang3d.models.imagebind.ImageBindTower``'s names under the modality (``vision.``, ``text.``, ``audio.``):
- ``modality_preprocessors.{m}.*`` -> ``{m}.preprocessor.*`` (vision ``rgbt_stem.proj.1`` and audio
  ``rgbt_stem.proj`` -> ``patch_embed``, audio ``rgbt_stem.norm_layer`` -> ``patch_norm``,
  ``pos_embedding_helper.pos_embed`` -> ``pos_embed``);
- ``modality_trunks.{m}.*`` -> ``{m}.trunk.*`` (``pre_transformer_layer.0`` -> ``pre_norm``, ``norm_1/2`` ->
  ``norm1/2``, ``mlp.fc1/fc2`` -> ``mlp.0/2``, ``attn.*`` as torch's MultiheadAttention names them);
- ``modality_heads.{m}`` (``0`` / ``2``; text: ``proj.0`` / ``proj.1``) -> ``{m}.head.norm`` / ``{m}.head.proj``;
- ``modality_postprocessors.{text,audio}.1.log_logit_scale`` -> ``{m}.postprocessor.log_scale``.
Dropped: the depth, thermal and IMU modalities; the text pre-processor's causal ``mask`` (a constant the tower
builds); in a Point-Bind release, everything outside ``bind.modality_{preprocessors,trunks,heads,postprocessors}``
(the 3D encoder and point head, which the ``pointbind`` kind reads).

Tensors are not copied out of the memory-mapped file: a tower's tensors are read when they are loaded into it, and a
modality that is not loaded is never read (``lang3d.models.imagebind.load_towers``).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lang3d.convert import CheckpointKind, Conversion, Published, register, rename

MODALITY = r"(vision|text|audio)"
_PARAM = r"(weight|bias)"
TOWER_PARTS = ("modality_preprocessors.", "modality_trunks.", "modality_heads.", "modality_postprocessors.")
RULES = [
    (r"modality_preprocessors\.vision\.rgbt_stem\.proj\.1\.weight", r"vision.preprocessor.patch_embed.weight"),
    (r"modality_preprocessors\.audio\.rgbt_stem\.proj\.weight", r"audio.preprocessor.patch_embed.weight"),
    (rf"modality_preprocessors\.audio\.rgbt_stem\.norm_layer\.{_PARAM}", r"audio.preprocessor.patch_norm.\1"),
    (r"modality_preprocessors\.(vision|audio)\.cls_token", r"\1.preprocessor.cls_token"),
    (r"modality_preprocessors\.(vision|audio)\.pos_embedding_helper\.pos_embed", r"\1.preprocessor.pos_embed"),
    (r"modality_preprocessors\.text\.(token_embedding\.weight|pos_embed)", r"text.preprocessor.\1"),
    (rf"modality_trunks\.vision\.pre_transformer_layer\.0\.{_PARAM}", r"vision.trunk.pre_norm.\1"),
    (rf"modality_trunks\.{MODALITY}\.blocks\.(\d+)\.norm_([12])\.{_PARAM}", r"\1.trunk.blocks.\2.norm\3.\4"),
    (rf"modality_trunks\.{MODALITY}\.blocks\.(\d+)\.attn\.(in_proj_weight|in_proj_bias|bias_k|bias_v)",
     r"\1.trunk.blocks.\2.attn.\3"),
    (rf"modality_trunks\.{MODALITY}\.blocks\.(\d+)\.attn\.out_proj\.{_PARAM}", r"\1.trunk.blocks.\2.attn.out_proj.\3"),
    (rf"modality_trunks\.{MODALITY}\.blocks\.(\d+)\.mlp\.fc1\.{_PARAM}", r"\1.trunk.blocks.\2.mlp.0.\3"),
    (rf"modality_trunks\.{MODALITY}\.blocks\.(\d+)\.mlp\.fc2\.{_PARAM}", r"\1.trunk.blocks.\2.mlp.2.\3"),
    (rf"modality_heads\.(vision|audio)\.0\.{_PARAM}", r"\1.head.norm.\2"),
    (r"modality_heads\.(vision|audio)\.2\.weight", r"\1.head.proj.weight"),
    (rf"modality_heads\.text\.proj\.0\.{_PARAM}", r"text.head.norm.\1"),
    (r"modality_heads\.text\.proj\.1\.weight", r"text.head.proj.weight"),
    (r"modality_postprocessors\.(text|audio)\.1\.log_logit_scale", r"\1.postprocessor.log_scale"),
]
_OTHER_MODALITY = re.compile(r"modality_(preprocessors|trunks|heads|postprocessors)\.(depth|thermal|imu)\.")
RELEASE_PREFIX = "bind."


def _prefix(raw: Mapping) -> str | None:
    """"" for ImageBind's own file, "bind." for a Point-Bind release, None for neither."""
    for prefix in ("", RELEASE_PREFIX):
        if any(str(k).startswith(f"{prefix}modality_trunks.") for k in raw):
            return prefix
    return None


def _is_imagebind(raw: Any) -> bool:
    return isinstance(raw, Mapping) and _prefix(raw) is not None


def _dropped(name: str) -> bool:
    return (not name.startswith(TOWER_PARTS) or bool(_OTHER_MODALITY.match(name))
            or name == "modality_preprocessors.text.mask")


def convert_imagebind(raw: Mapping, source: str) -> Conversion:
    prefix = _prefix(raw)
    outside = [k for k in raw if not k.startswith(prefix)]
    inside = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
    kept, dropped = rename(inside, RULES, source, drop=_dropped, copy=False)
    layout = "Point-Bind release, bind.*" if prefix else "imagebind_huge.pth"
    return Conversion("imagebind", source, kept, outside + [prefix + k for k in dropped], meta={"layout": layout})


KIND = register(
    CheckpointKind("imagebind", "ImageBind-Huge's vision, text and audio towers (imagebind_huge.pth, or the bind.* "
                   "tensors of a released Point-Bind model)", _is_imagebind, convert_imagebind),
    Published("imagebind_huge", "imagebind", "imagebind_huge.pth",
              "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"))

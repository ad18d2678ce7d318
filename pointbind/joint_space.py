"""The frozen towers of Point-Bind's joint space, by model name: ImageBind's own (``imagebind_huge``, the space the
released checkpoints were trained in; ``lang3d-tiny-imagebind`` for tests) or an open_clip model (``ViT-L-14``: the
space Point-E's vector models are conditioned on).

Each tower is an encoder with the same interface: text (strings -> [K,D]), image (uint8 [B,H,W,3] -> [B,D]) and,
for ImageBind only, audio (clips [B,S,1,128,204] -> [B,D]); each holds its weights as ``tower``.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lang3d.models.clip import CLIPTextEncoder, load_clip
from lang3d.models.imagebind import (ImageBindAudioEncoder, ImageBindImageEncoder, ImageBindTextEncoder, is_imagebind,
                                     load_towers)
from pointbind.clip_image import CLIPImageEncoder

MODALITIES = ("text", "image", "audio")
IMAGEBIND_TOWER = {"text": "text", "image": "vision", "audio": "audio"}   # this module's names -> ImageBind's


def check_modalities(modalities: Sequence[str], model: str) -> list[str]:
    """``modalities`` (no repeats) after checking each one is known and, for audio, that ``model`` has the tower."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"unknown joint-space modality {unknown or list(modalities)} (known: "
                         f"{', '.join(MODALITIES)})")
    if "audio" in modalities and not is_imagebind(model):
        raise ValueError(f"the audio tower is ImageBind's: model.clip_model '{model}' has none (use imagebind_huge, "
                         "configs/pointbind_imagebind.yaml)")
    return list(dict.fromkeys(modalities))


def load_joint_space(model: str, weights: str | None, modalities: Sequence[str]) -> dict[str, nn.Module]:
    """{modality: frozen encoder} of ``model``'s joint space for ``modalities`` (text, image, audio). ImageBind's
    towers are read one by one from ``weights`` (a tag or path: ``imagebind_huge.pth``, a Point-Bind release, or
    their ``lang3d convert imagebind`` output; None: random), so a modality not asked for is never read; an
    open_clip model is loaded whole (``load_clip``) and its towers asked for are kept."""
    modalities = check_modalities(modalities, model)
    if is_imagebind(model):
        towers = load_towers(model, weights, [IMAGEBIND_TOWER[m] for m in modalities])
        wrap = {"text": ImageBindTextEncoder, "image": ImageBindImageEncoder, "audio": ImageBindAudioEncoder}
        return {m: wrap[m](towers[IMAGEBIND_TOWER[m]]) for m in modalities}
    clip, tokenizer = load_clip(model, weights)
    build = {"text": lambda: CLIPTextEncoder(clip, tokenizer), "image": lambda: CLIPImageEncoder(clip)}
    return {m: build[m]() for m in modalities}

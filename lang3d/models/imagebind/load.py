"""ImageBind towers by architecture name and weights: strict, memory-mapped, one modality at a time.

    towers = load_towers("imagebind_huge", "pointbind_i2pmae", ["text", "vision"])   # audio is never read

Architectures are ``lang3d/models/imagebind/configs/*.json`` (``imagebind_huge``; ``lang3d-tiny-imagebind``, tiny
random towers for tests and demos, the sizes of the tiny ImageBind in tests/data/pointbind_official). Weights: None
(random initialisation, from torch's global seed), a tag (``imagebind_huge``, or a Point-Bind release's tag
``pointbind_i2pmae`` / ``pointbind_pointbert``: its ``bind.*`` tensors), or a path to either file or to its
``lang3d convert imagebind`` output (``lang3d.convert.imagebind``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lang3d.convert import read_checkpoint
from lang3d.models.imagebind.tower import MODALITIES, ImageBindTower
from lang3d.training.checkpoint import CheckpointMismatchError, load_tensors

CONFIG_DIR = Path(__file__).parent / "configs"
ARCHITECTURES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
KINDS = ("imagebind",)
log = logging.getLogger(__name__)


def is_imagebind(model_name: str) -> bool:
    """Whether ``model_name`` is one of the ImageBind architectures (``ARCHITECTURES``)."""
    return model_name in ARCHITECTURES


def architecture(model_name: str | Mapping) -> dict:
    """The sizes of an ImageBind architecture (by name, or given as a mapping): ``embed_dim`` and per modality
    ``width``, ``layers``, ``heads``."""
    if isinstance(model_name, Mapping):
        return dict(model_name)
    if not is_imagebind(model_name):
        raise ValueError(f"unknown ImageBind architecture '{model_name}' (known: {', '.join(ARCHITECTURES)})")
    return json.loads((CONFIG_DIR / f"{model_name}.json").read_text())


def check_modalities(modalities: Sequence[str]) -> list[str]:
    """``modalities`` without repeats, each one of ImageBind's towers here (vision, text, audio), else an error
    naming the unknown one."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"unknown ImageBind modality {unknown or modalities!r} (known: {', '.join(MODALITIES)})")
    return list(dict.fromkeys(modalities))


def load_towers(model_name: str | Mapping, weights: str | Path | None,
                modalities: Sequence[str]) -> dict[str, ImageBindTower]:
    """The towers of ``modalities`` at the sizes of ``model_name`` (``architecture``), frozen and in eval mode.

    With ``weights``, each tower is built without initialising (meta device, then empty CPU tensors) and filled from
    the file strictly: every tensor of the tower must be in the file with its shape, and every tensor the file holds
    for that modality must belong to the tower (errors name the file and the tensors). The file is memory-mapped and
    its tensors are read only when copied into a tower, so the modalities not asked for are never read."""
    modalities = check_modalities(modalities)
    sizes = architecture(model_name)
    if not weights:
        towers = {m: ImageBindTower(m, sizes) for m in modalities}
    else:
        conversion = read_checkpoint(weights, KINDS)
        towers = {}
        for m in modalities:
            state = {k[len(m) + 1:]: v for k, v in conversion.state.items() if k.startswith(f"{m}.")}
            if not state:
                held = sorted({k.split(".")[0] for k in conversion.state})
                raise CheckpointMismatchError(f"{conversion.source} holds no tensors of ImageBind's '{m}' tower "
                                              f"(it holds: {', '.join(held) or 'none'})")
            with torch.device("meta"):
                tower = ImageBindTower(m, sizes)
            tower.to_empty(device="cpu")
            load_tensors(tower, state, conversion.source, prefix=f"{m}.")
            towers[m] = tower
        log.info("%s: ImageBind towers %s loaded; %d tensors of the file dropped", conversion.source,
                 ", ".join(modalities), len(conversion.dropped))
    for tower in towers.values():
        tower.eval().requires_grad_(False)
    return towers

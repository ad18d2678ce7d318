"""Zero-shot prompts of ModelNet40 as ULIP and Point-Bind use them (their ``labels.json`` / ``templates.json``,
shipped unchanged in ``data/``): 40 class names with spaces ("flower pot"), in the order of
``shape_names.txt``, and 64 templates ("a point cloud model of {}.", ...)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def _load(name: str, key: str) -> tuple[str, ...]:
    text = resources.files("datamodules.modelnet40").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(json.loads(text)[key])


def prompt_names() -> tuple[str, ...]:
    """The 40 class names used in prompts, label order (spaces, not underscores)."""
    return _load("modelnet40_labels.json", "modelnet40")


def templates() -> tuple[str, ...]:
    """The 64 prompt templates, each with one ``{}`` for the class name."""
    return _load("modelnet40_templates.json", "modelnet40_64")


def class_prompts(names: tuple[str, ...] | list[str] | None = None) -> list[list[str]]:
    """Per class, the 64 filled templates: [C][64] strings (``names`` default: ``prompt_names()``).

    The zero-shot text embedding of a class is the re-normalised mean of its prompts' normalised embeddings.
    """
    return [[template.format(name) for template in templates()] for name in (names or prompt_names())]

"""Zero-shot classification in the joint space (ULIP / Point-Bind protocol): a class is the re-normalised mean of
its prompts' normalised text embeddings; a shape is classified by cosine similarity to every class."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy


def average_templates(embeddings: torch.Tensor) -> torch.Tensor:
    """Per-prompt text embeddings [C,T,D] (any norm) -> class embeddings [C,D]: L2-normalise each prompt's
    embedding, average over the T templates, L2-normalise the mean."""
    if embeddings.dim() != 3:
        raise ValueError(f"expected prompt embeddings [C,T,D], got {tuple(embeddings.shape)}")
    return F.normalize(F.normalize(embeddings.float(), dim=-1).mean(1), dim=-1)


def class_text_embeddings(encode: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                          templates: Sequence[str], chunk: int = 512) -> torch.Tensor:
    """``encode`` (texts -> [n,D]) of every template filled with every class name -> class embeddings [C,D]
    (``average_templates``); the prompts are encoded ``chunk`` at a time."""
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"templates must be non-empty and each hold '{{}}' for the class name; bad: {bad[:3]}")
    prompts = [t.format(name) for name in class_names for t in templates]
    rows = torch.cat([encode(prompts[i:i + chunk]) for i in range(0, len(prompts), chunk)])
    return average_templates(rows.reshape(len(class_names), len(templates), -1))


def zero_shot_logits(points: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of point embeddings [N,D] to class embeddings [C,D] -> [N,C]."""
    return F.normalize(points.float(), dim=-1) @ F.normalize(classes.float(), dim=-1).T


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """Fraction of rows whose label is among the k highest logits [N,C], for each k (capped at C): torchmetrics'
    micro-averaged multiclass accuracy with ``top_k``."""
    c = logits.shape[1]
    return {k: multiclass_accuracy(logits, labels, num_classes=c, top_k=min(k, c), average="micro") for k in ks}

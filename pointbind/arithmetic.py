"""Embedding-space arithmetic (Point-Bind Sec. 3.3): compose a 3D embedding with a text or image embedding of
the joint space and retrieve the nearest gallery items, e.g. "a car" (3D) + "a sea wave" (text) -> images of a
car by the sea.

    query = compose(model(points), text_embedding)          # normalise(normalise(a) + normalise(b))
    scores, index = nearest(query, gallery_embeddings, k=5)  # cosine similarity, best first
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def compose(*embeddings: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Embeddings [D] or [B,D] (same shape; any norm) -> normalise(Σ wᵢ·normalise(eᵢ)), same shape.
    ``weights`` default to 1 each."""
    if not embeddings:
        raise ValueError("compose needs at least one embedding")
    weights = [1.0] * len(embeddings) if weights is None else list(weights)
    if len(weights) != len(embeddings) or len({tuple(e.shape) for e in embeddings}) != 1:
        raise ValueError(f"compose needs one weight per embedding and equal shapes, got {len(weights)} weights for "
                         f"shapes {[tuple(e.shape) for e in embeddings]}")
    total = sum(w * F.normalize(e.float(), dim=-1) for w, e in zip(weights, embeddings))
    return F.normalize(total, dim=-1)


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of query [D] or [Q,D] to gallery [G,D] -> (scores, indices) [k] or [Q,k], best first
    (k capped at G)."""
    single = query.dim() == 1
    sim = F.normalize(query.float().reshape(-1, query.shape[-1]), dim=-1) @ F.normalize(gallery.float(), dim=-1).T
    scores, index = sim.topk(min(k, gallery.shape[0]), dim=1)
    return (scores[0], index[0]) if single else (scores, index)


def composed_retrieval(point_embedding: torch.Tensor, other_embedding: torch.Tensor, gallery: torch.Tensor,
                       k: int = 5, weights: Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``nearest(compose(point_embedding, other_embedding, weights), gallery, k)``."""
    return nearest(compose(point_embedding, other_embedding, weights=weights), gallery, k)

"""Point-Bind / ULIP alignment loss: symmetric InfoNCE point<->text plus point<->image over the global batch.

Under torch.distributed every rank gathers all ranks' embeddings (``lang3d.training.distributed.gather_rows``: ranks may
hold different numbers of rows, none included, e.g. after skipped samples; gradients reach every rank's rows);
its local rows are scored against the whole global batch, the positive of local row i being global column
offset + i. A rank's loss is the sum of its rows' cross-entropies times world / N (N rows over all ranks), so the
mean over ranks, which is what DDP's gradient averaging optimises, is the mean over the N rows: exactly the loss
and gradients of the global batch on one device, however the rows are split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lang3d.training.distributed import gather_rows, world


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, offset: int,
                       scale: torch.Tensor) -> torch.Tensor:
    """Σ_i (CE(scale·a_i·b_allᵀ) + CE(scale·b_i·a_allᵀ)) / 2 over the local rows a, b [B,D] (unit norm), the
    target of row i being column offset + i: a sum over rows, not a mean."""
    target = torch.arange(a.shape[0], device=a.device) + offset
    return (F.cross_entropy(scale * a @ b_all.T, target, reduction="sum")
            + F.cross_entropy(scale * b @ a_all.T, target, reduction="sum")) / 2


def alignment_loss(point: torch.Tensor, text: torch.Tensor | None, image: torch.Tensor | None,
                   scale: torch.Tensor, image_weight: float = 1.0, gather: bool = True) -> dict[str, torch.Tensor]:
    """Unit-norm embeddings [B,D] of the same B objects (B may be 0 on some ranks) -> {"loss", "loss_text",
    "loss_image", "acc_text", "acc_image"} (the last two: fraction of local points whose most similar global
    text / image is their own; NaN for B = 0). ``text`` or ``image`` None leaves that term out;
    loss = loss_text + image_weight·loss_image. ``gather`` False scores the local batch only (no collective
    call: for evaluation, where ranks may run different numbers of batches)."""
    if text is None and image is None:
        raise ValueError("alignment_loss needs text or image embeddings")
    gather_fn = gather_rows if gather else (lambda x: (x, 0))
    ranks = world()[0] if gather else 1
    point_all, offset = gather_fn(point)
    if len(point_all) == 0:
        raise ValueError("alignment_loss: no embeddings on any rank")
    per_row = ranks / len(point_all)
    target = torch.arange(point.shape[0], device=point.device) + offset
    out: dict[str, torch.Tensor] = {}
    loss = point.new_zeros(())
    for name, other, weight in (("text", text, 1.0), ("image", image, image_weight)):
        if other is None:
            continue
        if other.shape != point.shape:
            raise ValueError(f"{name} embeddings {tuple(other.shape)} do not match point embeddings "
                             f"{tuple(point.shape)}")
        other_all, _ = gather_fn(other)
        term = per_row * symmetric_info_nce(point, other, point_all, other_all, offset, scale)
        out[f"loss_{name}"] = term
        with torch.no_grad():
            out[f"acc_{name}"] = ((point @ other_all.T).argmax(1) == target).float().mean()
        loss = loss + weight * term
    out["loss"] = loss
    return out

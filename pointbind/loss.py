"""Point-Bind / ULIP alignment loss: symmetric InfoNCE point<->text plus point<->image over the global batch.

Under torch.distributed every rank gathers all ranks' embeddings (with gradients, through
``torch.distributed.nn.functional.all_gather``); its local rows are scored against the whole global batch, the
positive of local row i being global column rank·B + i. Averaged over ranks (as DDP averages gradients) this is
exactly the loss of the global batch on one device. Every rank must hold the same batch size B (training
loaders drop the last incomplete batch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' x [B,D] concatenated in rank order -> ([world·B, D], offset of this rank's rows).

    Gradients flow back to every rank's x; without an initialised process group: (x, 0)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(all_gather(x.contiguous()), dim=0), dist.get_rank() * x.shape[0]


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, a_all: torch.Tensor, b_all: torch.Tensor, offset: int,
                       scale: torch.Tensor) -> torch.Tensor:
    """(CE(scale·a·b_allᵀ) + CE(scale·b·a_allᵀ)) / 2 over local rows a, b [B,D] (unit norm); the target of
    row i is column offset + i."""
    target = torch.arange(a.shape[0], device=a.device) + offset
    return (F.cross_entropy(scale * a @ b_all.T, target) + F.cross_entropy(scale * b @ a_all.T, target)) / 2


def alignment_loss(point: torch.Tensor, text: torch.Tensor | None, image: torch.Tensor | None,
                   scale: torch.Tensor, image_weight: float = 1.0, gather: bool = True) -> dict[str, torch.Tensor]:
    """Unit-norm embeddings [B,D] of the same B objects -> {"loss", "loss_text", "loss_image",
    "acc_text", "acc_image"} (the last two: fraction of local points whose most similar global text / image is
    their own). ``text`` or ``image`` None leaves that term out; loss = loss_text + image_weight·loss_image.
    ``gather`` False scores the local batch only (no collective call: for evaluation, where ranks may run
    different numbers of batches)."""
    if text is None and image is None:
        raise ValueError("alignment_loss needs text or image embeddings")
    gather_fn = gather_with_grad if gather else (lambda x: (x, 0))
    point_all, offset = gather_fn(point)
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
        term = symmetric_info_nce(point, other, point_all, other_all, offset, scale)
        out[f"loss_{name}"] = term
        with torch.no_grad():
            out[f"acc_{name}"] = ((point @ other_all.T).argmax(1) == target).float().mean()
        loss = loss + weight * term
    out["loss"] = loss
    return out

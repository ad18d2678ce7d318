"""Cross-modal retrieval scores (recall@K, mAP) and the bank that collects embeddings across DDP ranks.

Relevance is label equality: item-level retrieval (Cap3D: a shape and its own caption / view) gives every item
its own label; class-level retrieval (ModelNet40) gives the class index, so every shape of the class counts.
The gallery is ranked by cosine similarity, highest first; exact ties keep gallery order.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_hit_rate

from lang3d.training.distributed import gather_rows, row_counts


def retrieval_scores(query: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor,
                     gallery_labels: torch.Tensor, ks: Sequence[int] = (1, 5, 10), exclude_self: bool = False,
                     chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Queries [Q,D] against gallery [G,D] -> {"R@k": ..., "mAP": ..., "queries": count}.

    R@k: fraction of queries with at least one relevant item among the k first (torchmetrics' hit rate). mAP: mean
    over queries of the average precision (1/R) Σ_{relevant ranks r} precision@r over the whole ranking
    (torchmetrics' average precision). The gallery is ranked once per query by a stable sort of the cosines (ties in
    gallery order), and torchmetrics is given the ranking as scores G, G-1, ..., 1: on raw cosines it would break
    ties by an unstable sort (scores would change with the order DDP gathers the gallery in) and count items scored
    <= 0 (negative cosines) as never retrieved. It reads only what changes its result, each query's first max(ks)
    items for R@k and its ranking up to the last relevant item for AP. ``exclude_self`` (query set = gallery set, e.g.
    3D->3D) removes each query from its own gallery. Queries with no relevant item are left out of every score (counted
    out of ``queries``).
    """
    if exclude_self and len(query) != len(gallery):
        raise ValueError("exclude_self needs the queries to be the gallery itself")
    if len(gallery) == 0 or len(query) != len(query_labels) or len(gallery) != len(gallery_labels):
        raise ValueError(f"retrieval needs a non-empty gallery and one label per item: query {len(query)} / "
                         f"{len(query_labels)} labels, gallery {len(gallery)} / {len(gallery_labels)} labels")
    query, gallery = F.normalize(query.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    rank_scores = torch.arange(len(gallery), 0, -1, dtype=torch.float32, device=gallery.device)   # G, ..., 1
    top = max(ks, default=1)
    hits: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    precisions: list[torch.Tensor] = []
    for start in range(0, len(query), chunk):
        sim = query[start:start + chunk] @ gallery.T                                     # [q, G]
        relevant = query_labels[start:start + chunk, None].to(gallery_labels.device) == gallery_labels[None]
        if exclude_self:
            rows = torch.arange(len(sim), device=sim.device)
            sim[rows, rows + start] = float("-inf")
            relevant[rows, rows + start] = False
        keep = relevant.any(1)
        order = sim[keep].argsort(dim=1, descending=True, stable=True)
        ranked = relevant[keep].gather(1, order)                                         # [q, G] by rank
        last = ranked.shape[1] - ranked.flip(1).int().argmax(1)                          # [q] last relevant + 1
        for rel, end in zip(ranked, last.tolist()):
            for k in ks:
                hits[k].append(retrieval_hit_rate(rank_scores[:top], rel[:top], top_k=k))
            precisions.append(retrieval_average_precision(rank_scores[:end], rel[:end]))
    counted = len(precisions)
    zero = query.new_zeros(())
    scores = {f"R@{k}": torch.stack(hits[k]).mean() if counted else zero for k in ks}
    scores["mAP"] = torch.stack(precisions).mean() if counted else zero
    scores["queries"] = torch.tensor(float(counted))
    return scores


class EmbeddingBank(nn.Module):
    """Collects named tensors batch by batch (``update(point=[B,D], label=[B], ...)``, the same names, trailing
    shapes and dtypes every time); ``compute()`` returns them concatenated across all DDP ranks (rank order) as
    {name: tensor}, or None when no rank holds a row. Under DDP ``compute`` is a collective that every rank calls,
    also a rank that saw no batch at all (an evaluation set smaller than the number of ranks): such a rank
    contributes no rows and learns the names' shapes and dtypes from the first rank that holds some."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = tuple(names)
        self._parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        self.register_buffer("_device", torch.empty(0), persistent=False)   # follows the module's device

    def update(self, **tensors: torch.Tensor) -> None:
        if set(tensors) != set(self.names):
            raise ValueError(f"EmbeddingBank.update needs exactly {self.names}, got {sorted(tensors)}")
        sizes = {len(t) for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"EmbeddingBank.update: tensors of different lengths {sizes}")
        for name, tensor in tensors.items():
            self._parts[name].append(tensor.detach())

    def reset(self) -> None:
        self._parts = {name: [] for name in self.names}

    def compute(self) -> dict[str, torch.Tensor] | None:
        local = {name: torch.cat(parts) if parts else None for name, parts in self._parts.items()}
        first = local[self.names[0]]
        device = first.device if first is not None else self._device.device
        counts = row_counts(0 if first is None else len(first), device)
        if sum(counts) == 0:
            return None
        if 0 in counts:  # ranks without rows make empty tensors like the first rank's with rows
            layout = [{name: (tuple(t.shape[1:]), t.dtype) for name, t in local.items()} if first is not None
                      else None]
            dist.broadcast_object_list(layout, src=next(r for r, n in enumerate(counts) if n))
            if first is None:
                local = {name: torch.empty((0, *shape), dtype=dtype, device=device)
                         for name, (shape, dtype) in layout[0].items()}
        return {name: gather_rows(tensor)[0] for name, tensor in local.items()}


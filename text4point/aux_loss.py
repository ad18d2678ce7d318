"""Text4Point fine-tuning auxiliary loss (Sec. 3.4, Eq. 15-16): encoder voxels classified against the class text
embeddings, supervised by pseudo labels = the mode of the labels of the input points around each voxel."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def _numpy(name: str, t: torch.Tensor, ndim: int, width: int | None = None) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.ndim != ndim or (width is not None and t.shape[1] != width):
        shape = "[N]" if ndim == 1 else f"[N, {width}]"
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a {shape} tensor, got {got}")
    return t.detach().cpu().numpy()


def pseudo_labels(query_xyz: torch.Tensor, query_batch: torch.Tensor, point_xyz: torch.Tensor,
                  point_batch: torch.Tensor, point_labels: torch.Tensor, radius: float,
                  ignore_index: int = -1) -> torch.Tensor:
    """Semantic label assignment of Sec. 3.4: per query, the most frequent label among the input points of the
    same batch item within ``radius`` (distance <= radius); ties go to the smallest label; points labelled
    ``ignore_index`` are not counted; queries without such a neighbour get ``ignore_index``.

    query_xyz [Nq, 3] metres (e.g. encoder voxel centres), query_batch [Nq] int, point_xyz [P, 3] metres,
    point_batch [P] int, point_labels [P] int, radius metres -> [Nq] int64 on query_xyz's device.
    """
    q = _numpy("query_xyz", query_xyz, 2, 3).astype(np.float64)
    qb = _numpy("query_batch", query_batch, 1)
    p = _numpy("point_xyz", point_xyz, 2, 3).astype(np.float64)
    pb = _numpy("point_batch", point_batch, 1)
    labels = _numpy("point_labels", point_labels, 1)
    if len(qb) != len(q) or len(pb) != len(p) or len(labels) != len(p):
        raise ValueError(f"length mismatch: query_xyz {len(q)}, query_batch {len(qb)}, point_xyz {len(p)}, "
                         f"point_batch {len(pb)}, point_labels {len(labels)}")
    if not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(qb.dtype, np.integer)
            and np.issubdtype(pb.dtype, np.integer)):
        raise ValueError("point_labels, query_batch and point_batch must be integer tensors")
    if not radius > 0:
        raise ValueError(f"radius must be > 0 metres, got {radius}")
    out = np.full(len(q), ignore_index, dtype=np.int64)
    keep = labels != ignore_index
    p, pb, labels = p[keep], pb[keep], labels[keep]
    classes, label_idx = np.unique(labels, return_inverse=True)  # sorted: argmax picks the smallest label on ties
    n_cls = len(classes)
    for b in np.intersect1d(np.unique(qb), np.unique(pb)):
        qi = np.flatnonzero(qb == b)
        pi = np.flatnonzero(pb == b)
        neighbours = cKDTree(p[pi]).query_ball_point(q[qi], r=radius, return_sorted=False)
        counts_per_query = np.fromiter(map(len, neighbours), dtype=np.int64, count=len(qi))
        if counts_per_query.sum() == 0:
            continue
        flat = np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours])
        rows = np.repeat(np.arange(len(qi)), counts_per_query)
        hist = np.bincount(rows * n_cls + label_idx[pi[flat]], minlength=len(qi) * n_cls).reshape(len(qi), n_cls)
        has = counts_per_query > 0
        out[qi[has]] = classes[hist[has].argmax(axis=1)]
    return torch.from_numpy(out).to(query_xyz.device)


def auxiliary_loss(h: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                   ignore_index: int = -1) -> torch.Tensor:
    """Eq. 15-16: s_ij = cos(h_i, t_j); L_aux = mean over queries with a label of CE(softmax(s_i / τ), y_i).

    h [Nq, d] (expanded encoder features ĥ3D), text [K, d] class embeddings t', labels [Nq] int (pseudo labels,
    ``ignore_index`` = none) -> scalar; 0 connected to the graph of h and text when no query has a label.
    Computed in at least float32.
    """
    if h.ndim != 2 or text.ndim != 2 or h.shape[1] != text.shape[1]:
        raise ValueError(f"h must be [Nq, d] and text [K, d] with the same d, got {tuple(h.shape)}, "
                         f"{tuple(text.shape)}")
    if labels.shape != (h.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer [Nq={h.shape[0]}] tensor, got {tuple(labels.shape)} "
                         f"{labels.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= text.shape[0]))
    if bool(bad.any()):
        raise ValueError(f"labels must be in [0, {text.shape[0]}) or ignore_index={ignore_index}, got "
                         f"{labels[bad][:5].tolist()}")
    dtype = torch.promote_types(torch.promote_types(h.dtype, text.dtype), torch.float32)
    scores = F.normalize(h.to(dtype), dim=1) @ F.normalize(text.to(dtype), dim=1).T  # [Nq, K], Eq. 15
    ce = F.cross_entropy(scores / temperature, labels.long(), ignore_index=ignore_index, reduction="none")
    return ce.sum() / valid.sum().clamp(min=1)  # Eq. 16 (ignored rows contribute 0)

"""Losses shared by the pipelines."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_voxel_contrastive_loss(pixel_feats: torch.Tensor, voxel_feats: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """Symmetric pixel-voxel InfoNCE of Text4Point Eq. (14), over a set S of matched pairs.

    pixel_feats, voxel_feats: [M, C]; row k of each is the k-th pair (i_k, j_k) of S. With
    c_kl = cos(pixel_k, voxel_l) / τ:
        L = -1/|S| Σ_k [ log softmax_l(c_k·)[k] + log softmax_q(c_·k)[k] ]
    i.e. the pixel→voxel and voxel→pixel terms are summed, as the equation is printed. Returns a scalar; an
    empty S (M = 0: no pair in the area a feature map covers) gives 0, still connected to both inputs' graphs.
    """
    if pixel_feats.shape != voxel_feats.shape or pixel_feats.dim() != 2:
        raise ValueError(f"expected two [M, C] tensors of equal shape, got {tuple(pixel_feats.shape)} and "
                         f"{tuple(voxel_feats.shape)}")
    if len(pixel_feats) == 0:
        return (pixel_feats.sum() + voxel_feats.sum()) * 0.0
    logits = F.normalize(pixel_feats, dim=1) @ F.normalize(voxel_feats, dim=1).T / temperature
    target = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over entries where target > 0 (depth: 0 = unknown); 0 when none is valid."""
    valid = target > 0
    if not valid.any():
        return pred.sum() * 0.0
    return (pred[valid] - target[valid]).abs().mean()

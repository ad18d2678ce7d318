"""VoteNet's training losses (Qi et al. 2019, ``loss_helper.py``) on a ``VoteNetOutput``.

    L = 10 · (L_vote + 0.5 L_obj + L_box + 0.1 L_sem)
    L_box = L_centre + 0.1 L_heading_cls + L_heading_reg + 0.1 L_size_cls + L_size_reg

* vote: per seed inside an object, the L1 distance (sum over x, y, z) from its vote to the nearest of its 3
  ground-truth votes; averaged over those seeds.
* objectness: a proposal whose aggregated vote lies within ``near`` metres of a ground-truth centre is positive,
  beyond ``far`` negative, in between ignored; cross-entropy weighted [0.2, 0.8] (negative, positive). Each
  proposal is assigned its nearest ground-truth box.
* centre: squared distances, both ways (Chamfer): predicted centres of positive proposals to their nearest
  ground-truth centre, and every ground-truth centre to its nearest predicted centre.
* heading / size / semantics on positive proposals against their assigned box: bin / cluster / class
  cross-entropy and Huber (δ = 1) on the normalised residuals of the true bin / cluster (size: mean over x, y, z).

Masked means divide by (count + 1e-6), as VoteNet.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from text4point.box_coder import BoxCoder
from text4point.votenet_head import VoteNetOutput

EPS = 1e-6


@dataclass
class DetectionTargets:
    """Ground truth padded to G boxes per scene (G >= 1): center [B,G,3], heading_class [B,G], heading_residual
    [B,G] (normalised), size_class [B,G], size_residual [B,G,3] (normalised), labels [B,G], mask [B,G] bool."""

    center: torch.Tensor
    heading_class: torch.Tensor
    heading_residual: torch.Tensor
    size_class: torch.Tensor
    size_residual: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor


def build_targets(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor], coder: BoxCoder,
                  device: torch.device | str = "cpu") -> DetectionTargets:
    """Encode B scenes' boxes [G_b,7] and labels [G_b] and pad them to max(1, max G_b) boxes."""
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"build_targets: {len(gt_boxes)} box tensors for {len(gt_labels)} label tensors")
    size = max([1] + [len(b) for b in gt_boxes])
    fields = {"center": (3,), "heading_class": (), "heading_residual": (), "size_class": (), "size_residual": (3,),
              "labels": ()}
    padded = {name: [] for name in fields}
    masks = []
    for boxes, labels in zip(gt_boxes, gt_labels):
        boxes, labels = boxes.to(device, torch.float32).reshape(-1, 7), labels.to(device).long()
        encoded = coder.encode(boxes, labels)
        values = {"center": encoded.center, "heading_class": encoded.heading_class,
                  "heading_residual": encoded.heading_residual, "size_class": encoded.size_class,
                  "size_residual": encoded.size_residual, "labels": labels}
        pad = size - len(boxes)
        for name, tail in fields.items():
            padded[name].append(torch.cat([values[name], values[name].new_zeros(pad, *tail)]))
        masks.append(torch.arange(size, device=device) < len(boxes))
    stacked = {name: torch.stack(parts) for name, parts in padded.items()}
    return DetectionTargets(mask=torch.stack(masks), **stacked)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ values over mask / (Σ mask + 1e-6); entries outside the mask (even inf / NaN) do not count."""
    mask = mask.bool()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / (mask.sum() + EPS)


def nearest(a: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For points a [B,N,3] and points b [B,M,3] (only those with b_mask [B,M] true count): squared distance
    [B,N] to the nearest b (inf when a scene has none) and its index [B,N]."""
    dist = ((a[:, :, None] - b[:, None]) ** 2).sum(-1)
    dist = dist.masked_fill(~b_mask[:, None, :], float("inf"))
    return dist.min(dim=-1)


def vote_loss(vote_xyz: torch.Tensor, seed_xyz: torch.Tensor, gt_votes: torch.Tensor,
              vote_mask: torch.Tensor) -> torch.Tensor:
    """vote_xyz, seed_xyz [B,S,3]; gt_votes [B,S,9] offsets object centre - seed (3 per seed); vote_mask [B,S]
    -> mean over masked seeds of min_j ||vote - (seed + gt_j)||_1."""
    gt = seed_xyz[:, :, None] + gt_votes.reshape(*gt_votes.shape[:2], 3, 3)
    dist = (vote_xyz[:, :, None] - gt).abs().sum(-1).min(dim=-1).values
    return masked_mean(dist, vote_mask)


def objectness_targets(proposal_xyz: torch.Tensor, targets: DetectionTargets, near: float = 0.3,
                       far: float = 0.6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """proposal_xyz [B,P,3] -> label [B,P] int64 (1: within ``near`` metres of a ground-truth centre), mask [B,P]
    bool (label 1, or farther than ``far``), assignment [B,P] int64 (index of the nearest ground-truth box)."""
    dist, assignment = nearest(proposal_xyz, targets.center, targets.mask)
    dist = torch.sqrt(dist + EPS)
    label = (dist < near).long()
    return label, (dist < near) | (dist > far), assignment


def detection_losses(out: VoteNetOutput, targets: DetectionTargets, gt_votes: torch.Tensor, vote_mask: torch.Tensor,
                     near: float = 0.3, far: float = 0.6,
                     objectness_weights: tuple[float, float] = (0.2, 0.8)) -> dict[str, torch.Tensor]:
    """All VoteNet losses; gt_votes [B,S,9] and vote_mask [B,S] are the seeds' ground-truth votes. Returns
    ``loss`` (the weighted total) and its parts ``vote``, ``objectness``, ``box``, ``center``, ``heading_cls``,
    ``heading_reg``, ``size_cls``, ``size_reg``, ``sem_cls``, plus ``positive_ratio`` (not a loss)."""
    losses = {"vote": vote_loss(out.vote_xyz, out.seed_xyz, gt_votes, vote_mask)}
    label, mask, assignment = objectness_targets(out.proposal_xyz.detach(), targets, near, far)
    weight = torch.tensor(objectness_weights, device=out.objectness.device, dtype=out.objectness.dtype)
    ce = F.cross_entropy(out.objectness.transpose(1, 2), label, weight=weight, reduction="none")
    losses["objectness"] = masked_mean(ce, mask)

    positive = label.bool()
    to_gt, _ = nearest(out.center, targets.center, targets.mask)
    to_pred, _ = nearest(targets.center, out.center, torch.ones_like(out.center[..., 0], dtype=torch.bool))
    losses["center"] = masked_mean(to_gt, positive) + masked_mean(to_pred, targets.mask)

    def assigned(values: torch.Tensor) -> torch.Tensor:   # [B,G,...] -> [B,P,...] values of the assigned boxes
        index = assignment.reshape(*assignment.shape, *([1] * (values.dim() - 2))).expand(
            *assignment.shape, *values.shape[2:])
        return values.gather(1, index)

    heading_class = assigned(targets.heading_class)
    losses["heading_cls"] = masked_mean(
        F.cross_entropy(out.heading_scores.transpose(1, 2), heading_class, reduction="none"), positive)
    heading_pred = out.heading_residuals.gather(-1, heading_class[..., None])[..., 0]
    losses["heading_reg"] = masked_mean(
        F.huber_loss(heading_pred, assigned(targets.heading_residual), reduction="none", delta=1.0), positive)

    size_class = assigned(targets.size_class)
    losses["size_cls"] = masked_mean(
        F.cross_entropy(out.size_scores.transpose(1, 2), size_class, reduction="none"), positive)
    index = size_class[..., None, None].expand(*size_class.shape, 1, 3)
    size_pred = out.size_residuals.gather(-2, index)[..., 0, :]
    size_huber = F.huber_loss(size_pred, assigned(targets.size_residual), reduction="none", delta=1.0).mean(-1)
    losses["size_reg"] = masked_mean(size_huber, positive)

    losses["sem_cls"] = masked_mean(
        F.cross_entropy(out.sem_scores.transpose(1, 2), assigned(targets.labels), reduction="none"), positive)
    losses["box"] = (losses["center"] + 0.1 * losses["heading_cls"] + losses["heading_reg"]
                     + 0.1 * losses["size_cls"] + losses["size_reg"])
    losses["loss"] = 10 * (losses["vote"] + 0.5 * losses["objectness"] + losses["box"] + 0.1 * losses["sem_cls"])
    losses["positive_ratio"] = positive.float().mean()
    return losses

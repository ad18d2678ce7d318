"""Point-cloud instance segmentation scores (S3DIS / ScanNet, as reported by PointGroup): mAP over IoU thresholds
0.50:0.95 and at 0.5, and the S3DIS per-class precision / recall at IoU 0.5 of SGPN, ASIS and PointGroup.

Ground truth: the points sharing an instance id (>= 0) form one instance; its class is the majority semantic label
of its points (ties to the lower label), and instances whose majority is -1 (ignored) are left out. Matching, per
scene and class, follows the ScanNet benchmark's greedy order: predictions by descending score, each taking the
still-unmatched ground-truth instance of its class with the highest mask IoU, a TP at threshold t if that IoU is
>= t, else a FP. AP is VOC all-point AP (``lang3d.detection_metrics.average_precision``).

Simplifications against ``evaluate_semantic_instance.py``: no prediction is excused as overlapping ignored
points, the threshold is >= (the benchmark's code has >), and AP uses the monotone precision envelope. Instances
and predictions smaller than ``min_region_size`` points are dropped (the benchmark uses 100 on ScanNet); a
prediction on a dropped instance is then a FP.

DDP: states as ``lang3d.detection_metrics.ScoredMatchMetric`` (matching is per scene, so the sync is exact).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lang3d.detection_metrics import ScoredMatchMetric

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))   # 0.50, 0.55, ..., 0.95


class InstanceSegmentationMetrics(ScoredMatchMetric):
    """``update`` takes ONE scene per call; ``compute()`` gives ``map`` (mean over classes with ground truth of
    the AP averaged over ``iou_thresholds``), ``map@0.5``, ``mprec@0.5``, ``mrec@0.5`` (means over classes with
    ground truth, NaN entries left out) and the per-class [K] float64 tensors ``ap``, ``ap@0.5``, ``prec@0.5`` (TP /
    predictions, NaN without predictions), ``rec@0.5`` (TP / ground truths), NaN without ground truth."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 iou_thresholds: Sequence[float] = IOU_THRESHOLDS, min_region_size: int = 1, **kwargs):
        super().__init__(num_classes, iou_thresholds, class_names, **kwargs)
        found = [i for i, t in enumerate(self.iou_thresholds) if math.isclose(t, 0.5)]
        if not found:
            raise ValueError(f"InstanceSegmentationMetrics: iou_thresholds {iou_thresholds} must include 0.5")
        if min_region_size < 1:
            raise ValueError(f"InstanceSegmentationMetrics: min_region_size must be >= 1, got {min_region_size}")
        self.index_50 = found[0]
        self.min_region_size = min_region_size

    def _ground_truth(self, gt_instance: torch.Tensor, gt_semantic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (instance index [P] int64 of each point into the kept instances, -1 for none; their labels [G])."""
        k = self.num_classes
        has_id = gt_instance >= 0
        _, inverse = torch.unique(gt_instance[has_id], return_inverse=True)
        num = int(inverse.max()) + 1 if inverse.numel() else 0
        votes = torch.bincount(inverse * (k + 1) + gt_semantic[has_id] + 1, minlength=num * (k + 1)).view(num, k + 1)
        label = votes.argmax(1) - 1
        kept = (label >= 0) & (votes.sum(1) >= self.min_region_size)
        new_index = torch.full((num,), -1, dtype=torch.int64, device=gt_instance.device)
        new_index[kept] = torch.arange(int(kept.sum()), device=gt_instance.device)
        point_index = torch.full_like(gt_instance, -1)
        point_index[has_id] = new_index[inverse]
        return point_index, label[kept]

    def update(self, pred_masks: torch.Tensor, pred_labels: torch.Tensor, pred_scores: torch.Tensor,
               gt_instance: torch.Tensor, gt_semantic: torch.Tensor) -> None:
        """One scene of P points: pred_masks [I,P] bool, pred_labels [I] int64, pred_scores [I]; gt_instance [P]
        int64 instance id per point (-1 = none), gt_semantic [P] int64 class per point (-1 = ignore)."""
        num_points = gt_instance.shape[0] if gt_instance.dim() == 1 else -1
        num_pred = pred_masks.shape[0] if pred_masks.dim() == 2 else -1
        if (num_points < 0 or gt_semantic.shape != gt_instance.shape or num_pred < 0
                or pred_masks.shape[1] != num_points or pred_labels.shape != (num_pred,)
                or pred_scores.shape != (num_pred,)):
            raise ValueError("InstanceSegmentationMetrics.update (one scene per call) needs pred_masks [I,P], "
                             "pred_labels [I], pred_scores [I], gt_instance [P], gt_semantic [P]; got "
                             f"{tuple(pred_masks.shape)}, {tuple(pred_labels.shape)}, {tuple(pred_scores.shape)}, "
                             f"{tuple(gt_instance.shape)}, {tuple(gt_semantic.shape)}")
        self._check_labels("pred_labels", pred_labels)
        if gt_semantic.numel() and (gt_semantic.min() < -1 or gt_semantic.max() >= self.num_classes):
            raise ValueError(f"InstanceSegmentationMetrics.update: gt_semantic must lie in [-1, {self.num_classes}),"
                             f" got {gt_semantic.min().item()}..{gt_semantic.max().item()}")
        device = pred_masks.device
        pred_masks = pred_masks.bool()
        gt_instance, gt_semantic = gt_instance.long().to(device), gt_semantic.long().to(device)
        size = pred_masks.sum(1)
        big = size >= self.min_region_size
        pred_masks, pred_labels, pred_scores, size = pred_masks[big], pred_labels[big], pred_scores[big], size[big]
        point_gt, gt_labels = self._ground_truth(gt_instance, gt_semantic)
        num_gt = len(gt_labels)
        gt_size = torch.bincount(point_gt[point_gt >= 0], minlength=num_gt)
        pred_index, point = pred_masks.nonzero(as_tuple=True)
        hit = point_gt[point]
        on_gt = hit >= 0
        inter = torch.bincount(pred_index[on_gt] * num_gt + hit[on_gt], minlength=len(size) * num_gt)
        inter = inter.view(len(size), num_gt).double()
        union = size[:, None] + gt_size[None, :] - inter
        iou = inter / union.clamp(min=1)
        self._add_scene(pred_scores, pred_labels.long(), iou, gt_labels, best_unmatched=True)

    def compute(self) -> dict[str, torch.Tensor]:
        table = self._per_class()
        ap = table["ap"].mean(0)                                   # NaN exactly where the class has no ground truth
        tp, num_pred = table["tp_count"][self.index_50], table["num_pred"].double()
        prec = torch.where(num_pred > 0, tp / num_pred.clamp(min=1), torch.full_like(tp, float("nan")))
        rec = table["recall"][self.index_50]
        has_gt = table["num_gt"] > 0
        return {"map": ap.nanmean(), "map@0.5": table["ap"][self.index_50].nanmean(),
                "mprec@0.5": prec[has_gt].nanmean(), "mrec@0.5": rec.nanmean(),
                "ap": ap, "ap@0.5": table["ap"][self.index_50], "prec@0.5": prec, "rec@0.5": rec}

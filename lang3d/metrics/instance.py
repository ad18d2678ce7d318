"""Point-cloud instance segmentation scores as the ScanNet benchmark computes them (``evaluate_semantic_instance.py``,
which PointGroup, mmdet3d and Pointcept use): AP per class averaged over IoU 0.50, 0.55, ..., 0.90, with AP@0.5
and AP@0.25 reported beside it (never averaged into it), plus the S3DIS precision / recall at IoU 0.5 of SGPN,
ASIS and PointGroup.

Ground truth: the points sharing an instance id (>= 0) form one instance; its class is the majority semantic label
of its points (ties to the lower label); instances whose majority is -1 (ignored) are not evaluated. Instances of
fewer than ``min_region_size`` points (ScanNet: 100) are not counted, and predictions that small are dropped.
"Void" points are those outside every evaluated instance: no instance id, or an instance of an ignored class.

``convention="scannet"`` (default), the benchmark's rules, per scene, class and threshold t:
- matching in the benchmark's order: ground-truth instances by ascending instance id, each taking the first
  prediction (in the order given to ``update``; the line order of a prediction file) of its class that overlaps
  it with IoU > t and has not matched an earlier instance; every further such prediction is a false positive and
  the instance keeps the highest score among them (at t >= 0.5 a prediction can exceed t with one instance only,
  at 0.25 a prediction that lost one instance may still match a later one);
- a prediction of IoU > t with no counted instance is excused, not a false positive, when it exceeds t with a too
  small instance of its class, or when more than t of its points are void or in too-small instances of its class;
- AP integrates precision over recall with trapezoids through the points of the distinct score thresholds plus
  (recall 0, precision 1), without the monotone envelope.
A class with ground truth whose predictions are all excused has AP 0 (README, Deviations). A class without
ground truth has NaN.

``convention="greedy_voc"``: predictions of all scenes by descending score, each
taking the best still-unmatched instance of its class, TP if that IoU > t; nothing excused; VOC all-point AP with
the monotone envelope; mAP over 0.50, 0.55, ..., 0.95.

DDP: matching is per scene, so the entry states of ``lang3d.metrics.detection.ScoredMatchMetric`` sync exactly.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from lang3d.metrics.detection import ScoredMatchMetric

BENCHMARK_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))   # 0.50 ... 0.90: np.arange(0.5, 0.95, 0.05)
GREEDY_VOC_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50 ... 0.95
REPORTED_THRESHOLDS = (0.25, 0.5)                                          # AP@0.25, AP@0.5 beside mAP
CONVENTIONS = ("scannet", "greedy_voc")


def benchmark_average_precision(scores, tp, num_gt: int) -> tuple[float, float]:
    """The ScanNet benchmark's AP of one class: curve entries scores [E], tp [E] bool (tensors or arrays) against
    num_gt ground truths -> (AP, recall at the lowest score). At each distinct score s, precision and recall of
    the entries scoring >= s; with (recall 0, precision 1) added, AP is the trapezoid area under these points.
    NaN, NaN without ground truth; 0, 0 without entries."""
    if num_gt == 0:
        return float("nan"), float("nan")
    scores = np.asarray(torch.as_tensor(scores).cpu(), dtype=np.float64)
    if len(scores) == 0:
        return 0.0, 0.0
    tp = np.asarray(torch.as_tensor(tp).cpu(), dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], np.cumsum(tp[order])
    last = np.append(np.flatnonzero(scores[1:] != scores[:-1]), len(scores) - 1)   # last entry of each score
    recall = np.concatenate([[0.0], hits[last] / num_gt])
    precision = np.concatenate([[1.0], hits[last] / (last + 1)])
    return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2)), float(recall[-1])


def benchmark_entries(scores: np.ndarray, iou: np.ndarray, gt_counted: np.ndarray, ignored_fraction: np.ndarray,
                      thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ScanNet benchmark's matching of one scene (see the module docstring).

    scores [I], in the order the predictions were given; iou [I,G] float64 with the scene's instances in ascending
    id order (negative for another class); gt_counted [G] bool (large enough); ignored_fraction [I] (void or
    too-small points / prediction size). -> curve entries (prediction index, threshold index, TP flag), each
    [E]; a prediction may give several entries at one threshold (a duplicate at one instance, a match at another).
    """
    pred_index, threshold_index, tp = [], [], []

    def add(p, t, hit):
        pred_index.append(p)
        threshold_index.append(np.full(len(p), t))
        tp.append(np.full(len(p), hit))
    for t, threshold in enumerate(thresholds):
        candidate = iou > threshold
        visited = np.zeros(len(scores), dtype=bool)
        for g in np.flatnonzero(gt_counted):
            preds = np.flatnonzero(candidate[:, g] & ~visited)
            if len(preds) == 0:
                continue
            visited[preds[0]] = True
            best = preds[np.argmax(scores[preds])]
            add(np.array([best]), t, True)
            add(preds[preds != best], t, False)
        add(np.flatnonzero(~candidate.any(1) & (ignored_fraction <= threshold)), t, False)
    return np.concatenate(pred_index), np.concatenate(threshold_index), np.concatenate(tp).astype(bool)


class InstanceSegmentationMetrics(ScoredMatchMetric):
    """``update`` takes ONE scene per call; ``compute()`` gives ``map`` (mean over classes with ground truth of
    the AP averaged over ``iou_thresholds``), ``map@0.5``, ``map@0.25``, ``mprec@0.5``, ``mrec@0.5`` (means over
    classes with ground truth, NaN entries left out) and the per-class [K] float64 tensors ``ap``, ``ap@0.5``,
    ``ap@0.25``, ``prec@0.5`` (TP / predictions, NaN without predictions), ``rec@0.5`` (TP / ground truths), NaN
    without ground truth.

    Args:
        convention: "scannet" (the benchmark's rules, default) or "greedy_voc" (see the module docstring).
        iou_thresholds: those ``map`` averages; default 0.50:0.05:0.90 ("scannet") or 0.50:0.05:0.95.
        min_region_size: instances and predictions with fewer points are not counted (ScanNet: 100 vertices).
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, convention: str = "scannet",
                 iou_thresholds: Sequence[float] | None = None, min_region_size: int = 100, **kwargs):
        if convention not in CONVENTIONS:
            raise ValueError(f"InstanceSegmentationMetrics: convention must be one of {CONVENTIONS}, got "
                             f"{convention!r}")
        if min_region_size < 1:
            raise ValueError(f"InstanceSegmentationMetrics: min_region_size must be >= 1, got {min_region_size}")
        if iou_thresholds is None:
            iou_thresholds = BENCHMARK_THRESHOLDS if convention == "scannet" else GREEDY_VOC_THRESHOLDS
        averaged = tuple(float(t) for t in iou_thresholds)
        extra = tuple(t for t in REPORTED_THRESHOLDS if not any(math.isclose(t, a) for a in averaged))
        super().__init__(num_classes, averaged + extra, class_names, **kwargs)
        self.convention = convention
        self.min_region_size = min_region_size
        self.num_averaged = len(averaged)
        self.reported = {t: next(i for i, a in enumerate(self.iou_thresholds) if math.isclose(t, a))
                         for t in REPORTED_THRESHOLDS}

    def per_class_keys(self) -> tuple[str, ...]:
        return "ap", "ap@0.5", "ap@0.25", "prec@0.5", "rec@0.5"

    def _ground_truth(self, gt_instance: torch.Tensor, gt_semantic: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (index [P] int64 of each point's evaluated instance, in ascending id order, -1 for void points;
        the instances' labels [G] and sizes [G])."""
        k = self.num_classes
        has_id = gt_instance >= 0
        _, inverse = torch.unique(gt_instance[has_id], return_inverse=True)   # sorted: ascending instance id
        num = int(inverse.max()) + 1 if inverse.numel() else 0
        votes = torch.bincount(inverse * (k + 1) + gt_semantic[has_id] + 1, minlength=num * (k + 1)).view(num, k + 1)
        label = votes.argmax(1) - 1
        kept = label >= 0
        new_index = torch.full((num,), -1, dtype=torch.int64, device=gt_instance.device)
        new_index[kept] = torch.arange(int(kept.sum()), device=gt_instance.device)
        point_index = torch.full_like(gt_instance, -1)
        point_index[has_id] = new_index[inverse]
        return point_index, label[kept], votes.sum(1)[kept]

    def update(self, pred_masks: torch.Tensor, pred_labels: torch.Tensor, pred_scores: torch.Tensor,
               gt_instance: torch.Tensor, gt_semantic: torch.Tensor) -> None:
        """One scene of P points: pred_masks [I,P] bool, pred_labels [I] int64, pred_scores [I] (in the order the
        benchmark would read them); gt_instance [P] int64 instance id per point (-1 = none), gt_semantic [P]
        int64 class per point (-1 = ignore)."""
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
        pred_masks, pred_labels = pred_masks.bool(), pred_labels.long()
        gt_instance, gt_semantic = gt_instance.long().to(device), gt_semantic.long().to(device)
        size = pred_masks.sum(1)
        big = size >= self.min_region_size
        pred_masks, pred_labels, pred_scores, size = pred_masks[big], pred_labels[big], pred_scores[big], size[big]
        point_gt, gt_labels, gt_size = self._ground_truth(gt_instance, gt_semantic)
        num_gt = len(gt_labels)
        pred_index, point = pred_masks.nonzero(as_tuple=True)
        hit = point_gt[point]
        on_gt = hit >= 0
        inter = torch.bincount(pred_index[on_gt] * num_gt + hit[on_gt], minlength=len(size) * num_gt)
        inter = inter.view(len(size), num_gt).double()
        iou = inter / (size[:, None] + gt_size[None, :] - inter).clamp(min=1)
        same_class = pred_labels[:, None] == gt_labels[None, :]
        counted = gt_size >= self.min_region_size
        if self.convention == "greedy_voc":
            self._add_greedy_scene(pred_scores, pred_labels, iou[:, counted], gt_labels[counted], best_unmatched=True)
            return
        void = torch.bincount(pred_index[~on_gt], minlength=len(size)).double()
        small = (inter * (same_class & ~counted[None, :])).sum(1)
        scores = pred_scores.detach().double().cpu().numpy()
        preds, thresholds, tp = benchmark_entries(
            scores, iou.masked_fill(~same_class, -1.0).cpu().numpy(), counted.cpu().numpy(),
            ((void + small) / size.clamp(min=1)).cpu().numpy(), self.iou_thresholds)
        self._add_entries(scores[preds], pred_labels.cpu().numpy()[preds], thresholds, tp, gt_labels[counted],
                          pred_labels)

    def compute(self) -> dict[str, torch.Tensor]:
        table = self._per_class(benchmark_average_precision if self.convention == "scannet" else None)
        ap = table["ap"][:self.num_averaged].mean(0)              # NaN exactly where the class has no ground truth
        at_50, at_25 = self.reported[0.5], self.reported[0.25]
        tp, num_pred = table["tp_count"][at_50], table["num_pred"].double()
        prec = torch.where(num_pred > 0, tp / num_pred.clamp(min=1), torch.full_like(tp, float("nan")))
        rec = table["recall"][at_50]
        has_gt = table["num_gt"] > 0
        return {"map": ap.nanmean(), "map@0.5": table["ap"][at_50].nanmean(),
                "map@0.25": table["ap"][at_25].nanmean(), "mprec@0.5": prec[has_gt].nanmean(),
                "mrec@0.5": rec.nanmean(), "ap": ap, "ap@0.5": table["ap"][at_50], "ap@0.25": table["ap"][at_25],
                "prec@0.5": prec, "rec@0.5": rec}

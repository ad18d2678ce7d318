"""3D detection mAP as VoteNet's ``eval_det`` (ScanNet, SUN RGB-D): per-class greedy matching of score-sorted
detections to ground-truth boxes, VOC all-point average precision (``use_07_metric=False``).

DDP: a detection only competes with detections of its own scene for that scene's ground truth, so matching
each scene by descending score at ``update`` gives the same TP/FP flags as VoteNet's global sort. The states are
then one entry per (detection, IoU threshold): score, label, threshold index and TP flag, concatenated across
processes, plus per-class ground-truth and detection counts summed, and ``compute`` is exact under any split of
the scenes. These entry states are 1-D float tensors because torchmetrics stands in an empty float tensor for a
process that saw no data.

A match needs IoU > threshold, strictly, as VoteNet's ``eval_det`` (``ovmax > ovthresh``). Tied scores are
ordered false positives first, which makes the result independent of the order the processes' detections are
gathered in (the curve is then that of the distinct score thresholds; VoteNet leaves ties to an unstable sort).
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lang3d.geometry.boxes import box_iou


def average_precision(recall, precision) -> float:
    """VOC all-point AP: area under the step curve of the monotone (non-increasing) precision envelope.

    recall [T], precision [T]: the curve of score-sorted detections (tensors or arrays, recall non-decreasing)."""
    rec = np.concatenate([[0.0], np.asarray(torch.as_tensor(recall).cpu(), dtype=np.float64), [1.0]])
    prec = np.concatenate([[0.0], np.asarray(torch.as_tensor(precision).cpu(), dtype=np.float64), [0.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * envelope[steps + 1]))


def ap_from_matches(scores: torch.Tensor, tp: torch.Tensor, num_gt: int) -> tuple[float, float]:
    """Detections of one class: scores [D], tp [D] bool, against num_gt ground truths -> (AP, max recall).
    Both NaN without ground truth; (0, 0) without detections."""
    if num_gt == 0:
        return float("nan"), float("nan")
    if len(scores) == 0:
        return 0.0, 0.0
    scores, tp = scores.double().cpu().numpy(), tp.cpu().numpy().astype(np.float64)
    hits = np.cumsum(tp[np.lexsort((tp, -scores))])
    recall = hits / num_gt
    return average_precision(recall, hits / np.arange(1, len(hits) + 1)), float(recall[-1])


def greedy_match(iou: np.ndarray, thresholds: Sequence[float], best_unmatched: bool) -> np.ndarray:
    """TP flags [D,T] bool of D detections (rows of iou [D,G], in descending score order; entries that may never
    match, e.g. another class, set negative) against G ground truths, at each of T thresholds.

    ``best_unmatched=False`` (VOC / VoteNet): a detection takes its best-IoU ground truth and is a TP if that IoU
    > t and the ground truth is still free. ``True`` (COCO style): it takes the best-IoU ground truth among those
    still free, a TP if that IoU > t."""
    thr = np.asarray(thresholds, dtype=np.float64)
    num_det, num_gt = iou.shape
    tp = np.zeros((num_det, len(thr)), dtype=bool)
    if num_gt == 0:
        return tp
    taken = np.zeros((len(thr), num_gt), dtype=bool)
    steps = np.arange(len(thr))
    for d in np.nonzero(iou.max(1) > thr.min())[0]:     # the others match nothing and leave the GT free
        if best_unmatched:
            free = np.where(taken, -np.inf, iou[d][None, :])          # [T,G]
            best = free.argmax(1)
            hit = free[steps, best] > thr
        else:
            best = np.full(len(thr), iou[d].argmax())
            hit = (iou[d, best] > thr) & ~taken[steps, best]
        tp[d] = hit
        taken[steps[hit], best[hit]] = True
    return tp


class ScoredMatchMetric(Metric):
    """Base of ``DetectionMAP`` and ``InstanceSegmentationMetrics``: one entry per scored prediction and IoU
    threshold that the precision / recall curve counts (score, class, threshold index, TP flag), concatenated over
    scenes and processes; ground-truth and prediction counts per class summed. A subclass adds a scene's entries
    with ``_add_entries`` (or ``_add_greedy_scene``) and reads ``_per_class``; its ``compute`` returns the [K]
    tensors named by ``per_class_keys``, which keep their class axis for any K (K = 1 included)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, iou_thresholds: Sequence[float], class_names: list[str] | None, **kwargs):
        super().__init__(**kwargs)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{type(self).__name__}: {len(class_names)} class names for {num_classes} classes")
        if len(iou_thresholds) == 0 or any(not 0 < t < 1 for t in iou_thresholds):
            raise ValueError(f"{type(self).__name__}: IoU thresholds must lie in (0, 1) (a match needs IoU > "
                             f"threshold), got {iou_thresholds}")
        self.num_classes = num_classes
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.class_names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
        for name in ("entry_scores", "entry_labels", "entry_thresholds", "entry_tp"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("num_gt", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_pred", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self._keep_class_axis()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)   # unpickling and deepcopy: torchmetrics wraps compute afresh
        self._keep_class_axis()

    def per_class_keys(self) -> tuple[str, ...]:
        """Keys of ``compute()``'s per-class [K] tensors (the others are scalars)."""
        raise NotImplementedError

    def _keep_class_axis(self) -> None:
        """torchmetrics' wrapper of ``compute`` (sync, cache) squeezes every one-element tensor of the result, so
        with one class the per-class [1] tensors would come out 0-dim. Wrap it once more to give them back their
        class axis [K]."""
        synced = self.compute

        @functools.wraps(synced)
        def compute() -> dict[str, torch.Tensor]:
            keys = self.per_class_keys()
            return {key: value.reshape(self.num_classes) if key in keys else value
                    for key, value in synced().items()}
        self.compute = compute

    def _check_labels(self, what: str, labels: torch.Tensor) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{type(self).__name__}.update: {what} must lie in [0, {self.num_classes}), got "
                             f"{labels.min().item()}..{labels.max().item()}")

    def _add_entries(self, scores, labels, thresholds, tp, gt_labels: torch.Tensor, pred_labels: torch.Tensor) -> None:
        """One scene's curve entries: scores, labels (class), thresholds (index into ``iou_thresholds``), tp (bool),
        each [E] (arrays or tensors); its ground truths' labels [G] and its predictions' labels [I] (counts)."""
        device = self.num_gt.device
        for name, values in (("entry_scores", scores), ("entry_labels", labels), ("entry_thresholds", thresholds),
                             ("entry_tp", tp)):
            getattr(self, name).append(torch.as_tensor(np.asarray(values), dtype=torch.float32, device=device))
        self.num_gt += torch.bincount(gt_labels.long().cpu(), minlength=self.num_classes).to(device)
        self.num_pred += torch.bincount(pred_labels.long().cpu(), minlength=self.num_classes).to(device)

    def _add_greedy_scene(self, scores: torch.Tensor, labels: torch.Tensor, iou: torch.Tensor,
                          gt_labels: torch.Tensor, best_unmatched: bool) -> None:
        """One scene matched by descending score (``greedy_match``): detections scores [D], labels [D]; iou [D,G]
        with its ground truths of labels [G]. Every detection is an entry at every threshold."""
        order = torch.sort(scores, descending=True, stable=True).indices
        scores, labels, iou = scores[order], labels[order], iou[order]
        iou = iou.double().masked_fill(labels[:, None] != gt_labels[None, :], -1.0)   # other classes never match
        tp = greedy_match(iou.cpu().numpy(), self.iou_thresholds, best_unmatched)    # [D,T]
        num_t = len(self.iou_thresholds)
        self._add_entries(np.repeat(scores.detach().double().cpu().numpy(), num_t),
                          np.repeat(labels.cpu().numpy(), num_t), np.tile(np.arange(num_t), len(scores)),
                          tp.reshape(-1), gt_labels, labels)

    def _per_class(self, average_precision_fn=None) -> dict[str, torch.Tensor]:
        """ap, recall, tp_count [T,K] float64 (ap, recall NaN where the class has no ground truth), num_pred [K],
        num_gt [K]. ``average_precision_fn(scores, tp, num_gt) -> (AP, recall)``: default ``ap_from_matches``."""
        average_precision_fn = average_precision_fn or ap_from_matches

        def cat(state):
            return dim_zero_cat(state).cpu() if len(state) else torch.zeros(0)
        scores, labels = cat(self.entry_scores), cat(self.entry_labels).long()
        thresholds, tp = cat(self.entry_thresholds).long(), cat(self.entry_tp).bool()
        shape = (len(self.iou_thresholds), self.num_classes)
        ap, recall = (torch.full(shape, float("nan"), dtype=torch.float64) for _ in range(2))
        tp_count = torch.zeros(shape, dtype=torch.float64)
        num_gt = self.num_gt.cpu()
        for t in range(len(self.iou_thresholds)):
            at_t = thresholds == t
            tp_count[t] = torch.bincount(labels[at_t & tp], minlength=self.num_classes).double()
            for k in range(self.num_classes):
                mine = at_t & (labels == k)
                ap[t, k], recall[t, k] = average_precision_fn(scores[mine], tp[mine], int(num_gt[k]))
        return {"ap": ap, "recall": recall, "tp_count": tp_count, "num_pred": self.num_pred.cpu(), "num_gt": num_gt}

    def named_scores(self, result: dict[str, torch.Tensor]) -> dict[str, float]:
        """``compute()``'s result flattened for logging: scalars as they are, per-class [K] entries as
        ``"<key>/<class name>"`` (NaN classes left out)."""
        out = {}
        per_class = self.per_class_keys()
        for key, value in result.items():
            if key in per_class:
                out.update({f"{key}/{name}": float(v) for name, v in zip(self.class_names, value) if not v.isnan()})
            else:
                out[key] = float(value)
        return out


class DetectionMAP(ScoredMatchMetric):
    """VoteNet's detection mAP. ``update(preds, targets)``: one dict per scene; preds ``boxes [P,7]`` (see
    ``lang3d.geometry.boxes``), ``scores [P]``, ``labels [P] int64``; targets ``boxes [G,7]``, ``labels [G] int64``.

    ``compute()``: ``map@t`` (mean AP over classes with ground truth), per-class ``ap@t`` [K] and ``recall@t`` [K]
    (recall at the lowest score), NaN for classes without ground truth; keys formatted ``f"map@{t:g}"``."""

    def __init__(self, num_classes: int, iou_thresholds: Sequence[float] = (0.25, 0.5), oriented: bool = False,
                 class_names: list[str] | None = None, **kwargs):
        super().__init__(num_classes, iou_thresholds, class_names, **kwargs)
        self.oriented = oriented

    def per_class_keys(self) -> tuple[str, ...]:
        return tuple(f"{what}@{t:g}" for t in self.iou_thresholds for what in ("ap", "recall"))

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"DetectionMAP.update: {len(preds)} prediction dicts for {len(targets)} target dicts")
        for scene, (pred, target) in enumerate(zip(preds, targets)):
            for what, d, keys in (("prediction", pred, ("boxes", "scores", "labels")),
                                  ("target", target, ("boxes", "labels"))):
                missing = [k for k in keys if k not in d]
                n = len(d["boxes"]) if "boxes" in d else None
                if missing or any(d[k].shape[0] != n for k in keys[1:]) or d["labels"].dim() != 1:
                    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in d.items()}
                    raise ValueError(f"DetectionMAP.update: scene {scene}: {what} dict needs {keys} of matching "
                                     f"length N (boxes [N,7]); got {shapes}")
            self._check_labels("prediction labels", pred["labels"])
            self._check_labels("target labels", target["labels"])
            boxes, labels = pred["boxes"], pred["labels"].long()
            gt_boxes, gt_labels = target["boxes"].to(boxes), target["labels"].long().to(boxes.device)
            # only detections of a class present in the scene can match: skip the IoU of the others
            iou = torch.full((len(boxes), len(gt_boxes)), -1.0, dtype=torch.float64, device=boxes.device)
            rows = torch.isin(labels, gt_labels)
            iou[rows] = box_iou(boxes[rows], gt_boxes, self.oriented).double()
            self._add_greedy_scene(pred["scores"], labels, iou, gt_labels, best_unmatched=False)

    def compute(self) -> dict[str, torch.Tensor]:
        table = self._per_class()
        out = {}
        for i, t in enumerate(self.iou_thresholds):
            out[f"map@{t:g}"] = table["ap"][i].nanmean()
            out[f"ap@{t:g}"] = table["ap"][i]
            out[f"recall@{t:g}"] = table["recall"][i]
        return out

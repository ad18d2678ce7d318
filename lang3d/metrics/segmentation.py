"""Semantic-segmentation scores from a confusion matrix accumulated with torchmetrics (correct under DDP:
the matrix is summed across processes before the scores are computed)."""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """confusion [K, K] (rows: ground truth, columns: prediction) → mIoU, mAcc, overall accuracy and the
    per-class IoU [K] and accuracy [K]. Classes absent from both ground truth and prediction get NaN and are
    left out of the means."""
    confusion = confusion.double()
    tp = confusion.diag()
    gt = confusion.sum(1)
    pred = confusion.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    return {"miou": iou.nanmean(), "macc": acc.nanmean(), "oa": tp.sum() / confusion.sum().clamp(min=1),
            "iou": iou, "acc": acc}


class SegmentationMetrics(MulticlassConfusionMatrix):
    """``update(pred [N], target [N])`` with class indices (``ignore_index`` targets skipped); ``scores()``
    gives the dict of ``scores_from_confusion`` for everything seen since the last reset."""

    def __init__(self, num_classes: int, ignore_index: int = -1):
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize="none")

    def scores(self) -> dict[str, torch.Tensor]:
        return scores_from_confusion(self.compute())

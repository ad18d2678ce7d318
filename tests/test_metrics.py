"""Segmentation metrics against a confusion matrix computed by hand."""
import numpy as np
import torch

from lang3d.metrics.segmentation import SegmentationMetrics


def by_hand(pred, target, k, ignore):
    conf = np.zeros((k, k))
    for p, t in zip(pred, target):
        if t != ignore:
            conf[t, p] += 1
    ious, accs = [], []
    for c in range(k):
        tp = conf[c, c]
        fp = conf[:, c].sum() - tp
        fn = conf[c, :].sum() - tp
        if tp + fp + fn > 0:
            ious.append(tp / (tp + fp + fn))
        if conf[c, :].sum() > 0:
            accs.append(tp / conf[c, :].sum())
    return conf, np.mean(ious), np.mean(accs), np.trace(conf) / conf.sum()


def test_scores_match_hand_computation_over_several_updates():
    rng = np.random.default_rng(0)
    k = 5
    metric = SegmentationMetrics(k, ignore_index=-1)
    preds, targets = [], []
    for _ in range(3):
        target = rng.integers(-1, k - 1, 200)  # class 4 never in the ground truth
        pred = np.where(rng.random(200) < 0.6, np.maximum(target, 0), rng.integers(0, k, 200))
        metric.update(torch.as_tensor(pred), torch.as_tensor(target))
        preds.append(pred)
        targets.append(target)
    conf, miou, macc, oa = by_hand(np.concatenate(preds), np.concatenate(targets), k, -1)
    s = metric.scores()
    np.testing.assert_array_equal(metric.compute().numpy(), conf)
    assert abs(float(s["miou"]) - miou) < 1e-12
    assert abs(float(s["macc"]) - macc) < 1e-12 and abs(float(s["oa"]) - oa) < 1e-12
    assert torch.isnan(s["acc"][4]) and s["iou"][4] == 0  # predicted but absent: IoU 0, accuracy undefined


def test_perfect_prediction_and_reset():
    metric = SegmentationMetrics(3)
    y = torch.tensor([0, 1, 2, 2, -1])
    metric.update(y.clamp(min=0), y)
    s = metric.scores()
    assert float(s["miou"]) == 1.0 and float(s["oa"]) == 1.0
    metric.reset()
    assert metric.compute().sum() == 0

"""Instance segmentation scores: a hand-scored scene, the matching rule, region-size filtering, a plain-Python
reference (point sets, global sort, greedy matching) on random scenes, and exact state merging."""
from collections import Counter

import numpy as np
import pytest
import torch

from lang3d.detection_metrics import average_precision
from lang3d.instance_metrics import IOU_THRESHOLDS, InstanceSegmentationMetrics


def masks(num_points, *point_lists):
    out = torch.zeros(len(point_lists), num_points, dtype=torch.bool)
    for row, points in enumerate(point_lists):
        out[row, list(points)] = True
    return out


def test_hand_made_scene():
    # 20 points: instance 0 = points 0-4 (class 0; point 4 labelled 1, outvoted), instance 1 = 5-9 (class 0),
    # instance 2 = 10-14 (class 1), points 15-17 no instance, instance 7 = 18-19 (ignored label: left out)
    gt_instance = torch.tensor([0] * 5 + [1] * 5 + [2] * 5 + [-1] * 3 + [7] * 2)
    gt_semantic = torch.tensor([0, 0, 0, 0, 1] + [0] * 5 + [1] * 5 + [-1] * 5)
    pred = masks(20, range(0, 5),            # class 0, .9: IoU 1 with instance 0: TP at every threshold
                 range(0, 4),                # class 0, .8: duplicate (IoU .8 with the taken instance 0): FP
                 [5, 6, 7, 8, 15],           # class 0, .7: IoU 4/6 with instance 1: TP up to 0.65
                 range(10, 15),              # class 0, .6: on the class-1 instance: FP
                 [10, 11, 12, 13, 16, 17],   # class 1, .5: IoU 4/7 with instance 2: TP up to 0.55
                 range(15, 20))              # class 2, .95: no class-2 instance: FP
    metric = InstanceSegmentationMetrics(3, class_names=["chair", "table", "sofa"])
    metric.update(pred, torch.tensor([0, 0, 0, 0, 1, 2]), torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.95]),
                  gt_instance, gt_semantic)
    out = metric.compute()
    # class 0 (2 GT), by score TP, FP, TP, FP: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1 -> AP 1/2 + 1/3
    # for t <= 0.65 (4 thresholds); TP, FP, FP, FP for t >= 0.7 (6 thresholds) -> AP 1/2
    ap0 = (4 * (1 / 2 + 1 / 3) + 6 * 0.5) / 10
    ap1 = 2 / 10                                  # class 1: AP 1 at 0.50 and 0.55, else 0
    np.testing.assert_allclose(out["ap"].numpy(), [ap0, ap1, np.nan], atol=1e-12)
    np.testing.assert_allclose(out["ap@0.5"].numpy(), [5 / 6, 1.0, np.nan], atol=1e-12)
    np.testing.assert_allclose(out["prec@0.5"].numpy(), [2 / 4, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["rec@0.5"].numpy(), [1.0, 1.0, np.nan], atol=1e-12)
    expected = {"map": (ap0 + ap1) / 2, "map@0.5": (5 / 6 + 1) / 2, "mprec@0.5": 0.75, "mrec@0.5": 1.0}
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, abs=1e-12), key
    assert metric.named_scores(out)["ap@0.5/table"] == pytest.approx(1.0)


def test_a_prediction_takes_the_best_still_unmatched_instance():
    # instances A = points 0-3 and B = 4-7, class 0. The second prediction (points 1-5) has IoU 3/6 with the taken
    # A and 2/7 with B: at 0.25 it matches B (TP), at 0.5 it is a FP
    gt_instance = torch.tensor([0] * 4 + [1] * 4)
    metric = InstanceSegmentationMetrics(1, iou_thresholds=(0.25, 0.5))
    metric.update(masks(8, range(0, 4), range(1, 6)), torch.tensor([0, 0]), torch.tensor([0.9, 0.8]),
                  gt_instance, torch.zeros(8, dtype=torch.int64))
    out = metric.compute()
    assert float(out["ap@0.5"]) == pytest.approx(0.5) and float(out["map"]) == pytest.approx((1.0 + 0.5) / 2)


def test_small_regions_are_dropped():
    # instance A = 0-3, B = 4-5 (2 points). Predictions: on A (.5), on B (.6), on B plus 2 more points (.9)
    gt_instance = torch.tensor([0] * 4 + [1] * 2 + [-1] * 2)
    args = (masks(8, range(0, 4), [4, 5], range(4, 8)), torch.zeros(3, dtype=torch.int64),
            torch.tensor([0.5, 0.6, 0.9]), gt_instance, torch.zeros(8, dtype=torch.int64))
    small = InstanceSegmentationMetrics(1, min_region_size=3)
    small.update(*args)
    out = small.compute()   # B and the prediction on B dropped; the .9 prediction is then a FP before the TP
    assert float(out["prec@0.5"]) == 0.5 and float(out["rec@0.5"]) == 1.0 and float(out["ap@0.5"]) == 0.5
    every = InstanceSegmentationMetrics(1)
    every.update(*args)
    out = every.compute()   # .9 prediction: IoU 2/4 with B: TP; the .6 one a duplicate of it: FP
    assert float(out["prec@0.5"]) == pytest.approx(2 / 3) and float(out["rec@0.5"]) == 1.0


def random_scene(rng, num_points=80, num_classes=3):
    gt_instance = rng.integers(-1, 6, num_points)
    instance_class = rng.integers(-1, num_classes, 6)              # some instances carry the ignore label
    gt_semantic = np.where(gt_instance >= 0, instance_class[gt_instance], rng.integers(-1, num_classes, num_points))
    noisy = rng.random(num_points) < 0.15
    gt_semantic[noisy] = rng.integers(-1, num_classes, noisy.sum())
    rows, labels = [], []
    for inst in range(6):
        for _ in range(rng.integers(0, 3)):                         # 0-2 noisy copies per instance
            rows.append((gt_instance == inst) ^ (rng.random(num_points) < 0.08))
            labels.append(max(instance_class[inst], 0) if rng.random() < 0.8 else rng.integers(0, num_classes))
    for _ in range(2):                                              # clutter
        rows.append(rng.random(num_points) < 0.1)
        labels.append(rng.integers(0, num_classes))
    pred = np.array(rows).reshape(-1, num_points)
    return (torch.as_tensor(pred), torch.as_tensor(np.array(labels, dtype=np.int64)),
            torch.as_tensor(rng.random(len(rows))).float(), torch.as_tensor(gt_instance), torch.as_tensor(gt_semantic))


def reference_scores(scenes, num_classes, thresholds):
    """Point sets, majority labels by counting, global score sort, best free instance with plain loops."""
    gts, dets = [], []
    for s, (pred, labels, scores, gt_instance, gt_semantic) in enumerate(scenes):
        for inst in sorted(set(gt_instance.tolist()) - {-1}):
            points = {p for p in range(len(gt_instance)) if gt_instance[p] == inst}
            votes = Counter(int(gt_semantic[p]) for p in points)
            label = max(sorted(votes), key=lambda c: votes[c])       # first of the most voted, lowest label
            if label >= 0:
                gts.append((s, label, points))
        for i in range(len(pred)):
            dets.append((float(scores[i]), s, int(labels[i]), {p for p in range(pred.shape[1]) if pred[i, p]}))
    dets.sort(key=lambda d: -d[0])
    ap = np.full((len(thresholds), num_classes), np.nan)
    tp_at = np.zeros((len(thresholds), num_classes))
    for ti, t in enumerate(thresholds):
        taken = set()
        flags = {k: [] for k in range(num_classes)}
        for _, s, k, points in dets:
            best, best_iou = None, -1.0
            for g, (gs, gk, gpoints) in enumerate(gts):
                if gs == s and gk == k and g not in taken:
                    iou = len(points & gpoints) / len(points | gpoints)
                    if iou > best_iou:
                        best, best_iou = g, iou
            flags[k].append(best is not None and best_iou >= t)
            if flags[k][-1]:
                taken.add(best)
        for k in range(num_classes):
            npos = sum(gk == k for _, gk, _ in gts)
            tp_at[ti, k] = sum(flags[k])
            if npos:
                hits = np.cumsum(flags[k])
                ap[ti, k] = average_precision(hits / npos, hits / np.arange(1, len(hits) + 1)) if flags[k] else 0.0
    return ap, tp_at, np.array([sum(gk == k for _, gk, _ in gts) for k in range(num_classes)]), \
        np.array([sum(d[2] == k for d in dets) for k in range(num_classes)])


def test_matches_a_plain_reference_on_random_scenes():
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(5)]
    metric = InstanceSegmentationMetrics(3)
    for scene in scenes:
        metric.update(*scene)
    out = metric.compute()
    ap, tp_at, num_gt, num_pred = reference_scores(scenes, 3, IOU_THRESHOLDS)
    np.testing.assert_allclose(out["ap"].numpy(), ap.mean(0), atol=1e-12)
    np.testing.assert_allclose(out["ap@0.5"].numpy(), ap[0], atol=1e-12)
    np.testing.assert_allclose(out["prec@0.5"].numpy(), tp_at[0] / num_pred, atol=1e-12)
    np.testing.assert_allclose(out["rec@0.5"].numpy(), tp_at[0] / num_gt, atol=1e-12)
    assert float(out["map"]) == pytest.approx(np.nanmean(ap.mean(0)), abs=1e-12)
    assert 0.1 < float(out["map"]) < float(out["map@0.5"]) < 1      # neither trivial nor perfect


def test_merged_state_equals_one_pass():
    rng = np.random.default_rng(8)
    scenes = [random_scene(rng) for _ in range(6)]
    whole, first, second = (InstanceSegmentationMetrics(3) for _ in range(3))
    for i, scene in enumerate(scenes):
        whole.update(*scene)
        (first if i % 2 else second).update(*scene)
    first.merge_state(second)
    expected, merged = whole.compute(), first.compute()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], equal_nan=True, rtol=0, atol=1e-12)


def test_bad_inputs_are_named():
    metric = InstanceSegmentationMetrics(2)
    ok = dict(pred_masks=torch.zeros(1, 4, dtype=torch.bool), pred_labels=torch.tensor([0]),
              pred_scores=torch.ones(1), gt_instance=torch.zeros(4, dtype=torch.int64),
              gt_semantic=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="one scene per call"):
        metric.update(**{**ok, "pred_masks": torch.zeros(1, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"gt_semantic must lie in \[-1, 2\)"):
        metric.update(**{**ok, "gt_semantic": torch.full((4,), 2)})
    with pytest.raises(ValueError, match="pred_labels"):
        metric.update(**{**ok, "pred_labels": torch.tensor([-1])})
    with pytest.raises(ValueError, match="must include 0.5"):
        InstanceSegmentationMetrics(2, iou_thresholds=(0.25,))

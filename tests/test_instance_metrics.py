"""Instance segmentation scores. The ScanNet benchmark convention (default): golden values of the official
``evaluate_semantic_instance.py`` on generated scenes (tests/data/scannet_instance_eval, made by its
make_fixture.py) and a hand-scored scene. The former greedy / VOC convention: a hand-scored scene, the matching
rule, region-size filtering and a plain-Python reference on random scenes. Both: exact state merging."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lang3d.metrics.detection import average_precision
from lang3d.metrics.instance import GREEDY_VOC_THRESHOLDS, InstanceSegmentationMetrics

FIXTURE = Path(__file__).parent / "data" / "scannet_instance_eval"


def greedy_voc(num_classes, **kwargs):
    return InstanceSegmentationMetrics(num_classes, convention="greedy_voc", min_region_size=1, **kwargs)


def masks(num_points, *point_lists):
    out = torch.zeros(len(point_lists), num_points, dtype=torch.bool)
    for row, points in enumerate(point_lists):
        out[row, list(points)] = True
    return out


def test_greedy_voc_hand_made_scene():
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
    metric = greedy_voc(3, class_names=["chair", "table", "sofa"])
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


def test_greedy_voc_prediction_takes_the_best_still_unmatched_instance():
    # instances A = points 0-3 and B = 4-7, class 0. The second prediction (points 1-5) has IoU 3/6 with the taken
    # A and 2/7 with B: at 0.25 it matches B (TP), at 0.5 it is a FP
    gt_instance = torch.tensor([0] * 4 + [1] * 4)
    metric = greedy_voc(1, iou_thresholds=(0.25, 0.5))
    metric.update(masks(8, range(0, 4), range(1, 6)), torch.tensor([0, 0]), torch.tensor([0.9, 0.8]),
                  gt_instance, torch.zeros(8, dtype=torch.int64))
    out = metric.compute()
    assert float(out["ap@0.5"]) == pytest.approx(0.5) and float(out["map"]) == pytest.approx((1.0 + 0.5) / 2)


def test_greedy_voc_small_regions_are_dropped():
    # instance A = 0-3, B = 4-5 (2 points). Predictions: on A (.5), on B (.6), on B plus 2 more points (.9)
    gt_instance = torch.tensor([0] * 4 + [1] * 2 + [-1] * 2)
    args = (masks(8, range(0, 4), [4, 5], range(4, 8)), torch.zeros(3, dtype=torch.int64),
            torch.tensor([0.5, 0.6, 0.9]), gt_instance, torch.zeros(8, dtype=torch.int64))
    small = InstanceSegmentationMetrics(1, convention="greedy_voc", min_region_size=3)
    small.update(*args)
    out = small.compute()   # B and the prediction on B dropped; the .9 prediction is then a FP before the TP
    assert float(out["prec@0.5"]) == 0.5 and float(out["rec@0.5"]) == 1.0 and float(out["ap@0.5"]) == 0.5
    every = greedy_voc(1)
    every.update(*args)
    out = every.compute()   # .9 prediction: IoU 2/4 with B, not above 0.5: FP; the .6 and .5 ones: TP
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
            flags[k].append(best is not None and best_iou > t)
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


def test_greedy_voc_matches_a_plain_reference_on_random_scenes():
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(5)]
    metric = greedy_voc(3)
    for scene in scenes:
        metric.update(*scene)
    out = metric.compute()
    ap, tp_at, num_gt, num_pred = reference_scores(scenes, 3, GREEDY_VOC_THRESHOLDS)
    np.testing.assert_allclose(out["ap"].numpy(), ap.mean(0), atol=1e-12)
    np.testing.assert_allclose(out["ap@0.5"].numpy(), ap[0], atol=1e-12)
    np.testing.assert_allclose(out["prec@0.5"].numpy(), tp_at[0] / num_pred, atol=1e-12)
    np.testing.assert_allclose(out["rec@0.5"].numpy(), tp_at[0] / num_gt, atol=1e-12)
    assert float(out["map"]) == pytest.approx(np.nanmean(ap.mean(0)), abs=1e-12)
    assert 0.1 < float(out["map"]) < float(out["map@0.5"]) < 1      # neither trivial nor perfect


@pytest.mark.parametrize("convention", ["scannet", "greedy_voc"])
def test_merged_state_equals_one_pass(convention):
    rng = np.random.default_rng(8)
    scenes = [random_scene(rng) for _ in range(6)]
    whole, first, second = (InstanceSegmentationMetrics(3, convention=convention, min_region_size=3)
                            for _ in range(3))
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
    with pytest.raises(ValueError, match="convention must be one of"):
        InstanceSegmentationMetrics(2, convention="coco")
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        InstanceSegmentationMetrics(2, iou_thresholds=(0.5, 1.0))


def test_scannet_hand_made_scene():
    # 26 points: A = 0-5 (id 10) and B = 6-11 (id 11) of class 0, a 2-point class-0 instance 12-13 (id 12: below
    # min_region_size 3, not counted), void: 14-17 (id 20, ignored label) and 18-19 (no id); C = 20-25 (class 1)
    gt_instance = torch.tensor([10] * 6 + [11] * 6 + [12] * 2 + [20] * 4 + [-1] * 2 + [30] * 6)
    gt_semantic = torch.tensor([0] * 14 + [-1] * 6 + [1] * 6)
    p0 = list(range(0, 10))                 # A and most of B: IoU .6 with A, 4/12 with B
    p1 = list(range(0, 5))                  # IoU 5/6 with A
    p2 = list(range(6, 12))                 # B exactly
    p3 = list(range(14, 20))                # all void: excused at every threshold
    p4 = [14, 15, 10, 11]                   # half void, IoU 2/8 with B: excused at .25, a FP at .5
    p5 = [12, 13, 18]                       # IoU 2/3 with the small instance: excused (never a FP) below 2/3
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    scores = {"p0": 0.5, "p1": 0.9, "p2": 0.4, "p3": 0.8, "p4": 0.7, "p5": 0.95, "p6": 0.6}

    def score(order):
        masks_of = dict(p0=p0, p1=p1, p2=p2, p3=p3, p4=p4, p5=p5, p6=p3)   # p6: class 1, all void
        metric = InstanceSegmentationMetrics(2, iou_thresholds=(0.5,), min_region_size=3)
        metric.update(masks(26, *(masks_of[n] for n in order)), labels, torch.tensor([scores[n] for n in order]),
                      gt_instance, gt_semantic)
        return metric.compute()
    # at .5, A takes p1 (first in order) and keeps the best score of p1 and p0, p0 a FP at .5: entries TP .9,
    # FP .7 (p4), FP .5, TP .4 (p2). Precision / recall at each score: (1, .5), (.5, .5), (1/3, .5), (.5, 1); with
    # (recall 0, precision 1) the trapezoids give .5 + .5 (1/3 + 1/2) / 2 = 17/24 (the VOC envelope gives .75)
    out = score(["p1", "p0", "p2", "p3", "p4", "p5", "p6"])
    np.testing.assert_allclose(out["ap@0.5"].numpy(), [17 / 24, 0.0], atol=1e-12)   # class 1: all excused -> 0
    # at .25, A is matched by p1 (first), p0 (a FP there) stays free and matches B (TP with .5, p2 a FP at .4):
    # entries TP .9, FP .5, TP .5, FP .4 -> points (.5, 1), (1, 2/3), (1, .5): AP .5 + .5 (1 + 2/3) / 2 = 11/12
    np.testing.assert_allclose(out["ap@0.25"].numpy(), [11 / 12, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["prec@0.5"].numpy(), [2 / 6, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["rec@0.5"].numpy(), [1.0, 0.0], atol=1e-12)
    assert float(out["map"]) == pytest.approx(17 / 48) and float(out["map@0.25"]) == pytest.approx(11 / 24)
    # the benchmark's order, not the scores, decides at .25: with p0 first it takes A, and p2 alone matches B:
    # TP .9, FP .5, TP .4 -> (.5, 1), (.5, .5), (1, 2/3): AP .5 + .5 (1/2 + 2/3) / 2 = 19/24
    out = score(["p0", "p1", "p2", "p3", "p4", "p5", "p6"])
    np.testing.assert_allclose(out["ap@0.25"].numpy(), [19 / 24, 0.0], atol=1e-12)
    np.testing.assert_allclose(out["ap@0.5"].numpy(), [17 / 24, 0.0], atol=1e-12)


def fixture_scenes(arrays, case, num_scenes, class_ids):
    """The fixture's scenes in ``update``'s arguments: class index = position of the label id in class_ids;
    ground-truth ids kept as instance ids (0 -> -1), classes outside class_ids -> -1 (void)."""
    index = {cid: k for k, cid in enumerate(class_ids)}
    for s in range(num_scenes):
        key = f"c{case}_s{s}"
        gt_ids, num_verts = arrays[f"{key}_gt_ids"], int(arrays[f"{key}_num_verts"])
        pred = np.unpackbits(arrays[f"{key}_pred_masks"], axis=1, count=num_verts).astype(bool)
        labels = [index[int(c)] for c in arrays[f"{key}_pred_label_ids"]]
        yield (torch.as_tensor(pred), torch.tensor(labels), torch.as_tensor(arrays[f"{key}_pred_scores"]),
               torch.as_tensor(np.where(gt_ids > 0, gt_ids, -1)),
               torch.tensor([index.get(int(c), -1) for c in gt_ids // 1000]))


def official_results():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    arrays = np.load(FIXTURE / "cases.npz")
    for c, case in enumerate(expected["cases"]):
        ap = np.array([[np.nan if v is None else v for v in row] for row in case["ap"]])   # [class, overlap]
        yield (list(fixture_scenes(arrays, c, case["num_scenes"], expected["valid_class_ids"])), ap,
               case["averages"], case, expected)


def test_scannet_convention_reproduces_the_official_script():
    cases = 0
    for scenes, ap, averages, case, expected in official_results():
        num_classes, overlaps = len(expected["valid_class_ids"]), expected["overlaps"]
        metric = InstanceSegmentationMetrics(num_classes, min_region_size=expected["min_region_size"])
        for scene in scenes:
            metric.update(*scene)
        out = metric.compute()
        averaged = [o for o, t in enumerate(overlaps) if t > 0.45]           # 0.50 ... 0.90
        np.testing.assert_allclose(out["ap"].numpy(), ap[:, averaged].mean(1), atol=1e-9)
        np.testing.assert_allclose(out["ap@0.5"].numpy(), ap[:, overlaps.index(0.5)], atol=1e-9)
        np.testing.assert_allclose(out["ap@0.25"].numpy(), ap[:, overlaps.index(0.25)], atol=1e-9)
        for key, name in (("map", "all_ap"), ("map@0.5", "all_ap_50%"), ("map@0.25", "all_ap_25%")):
            assert float(out[key]) == pytest.approx(averages[name], abs=1e-9), key
        for o, t in enumerate(overlaps):                                     # each threshold on its own
            alone = InstanceSegmentationMetrics(num_classes, iou_thresholds=(round(t, 2),),
                                                min_region_size=expected["min_region_size"])
            for scene in scenes:
                alone.update(*scene)
            np.testing.assert_allclose(alone.compute()["ap"].numpy(), ap[:, o], atol=1e-9, err_msg=f"IoU {t}")
        if "official_error" in case:      # the class whose predictions are all excused: official IndexError
            k = expected["valid_class_ids"].index(case["scored_without_label_id"])
            assert float(out["ap"][k]) == 0.0 and metric.num_pred[k] > 0
        cases += 1
    assert cases == 7


def test_greedy_voc_is_not_the_benchmark():
    differ = 0
    for scenes, ap, _, _, expected in official_results():
        metric = InstanceSegmentationMetrics(len(expected["valid_class_ids"]), convention="greedy_voc",
                                             iou_thresholds=(0.5,), min_region_size=expected["min_region_size"])
        for scene in scenes:
            metric.update(*scene)
        out = metric.compute()
        official = ap[:, expected["overlaps"].index(0.5)]
        differ += not np.allclose(out["ap@0.5"].numpy(), official, atol=1e-6, equal_nan=True)
    assert differ >= 4


@pytest.mark.parametrize("convention", ["scannet", "greedy_voc"])
def test_one_class_keeps_its_class_axis_and_names(convention):
    """num_classes=1: per-class results stay [1] (torchmetrics squeezes one-element tensors), equal the
    multi-class path on the same scenes (and, greedy_voc, the plain reference), and are logged under the class
    name."""
    rng = np.random.default_rng(10)
    scenes = [random_scene(rng, num_classes=1) for _ in range(5)]
    one = InstanceSegmentationMetrics(1, ["chair"], convention=convention, min_region_size=3)
    three = InstanceSegmentationMetrics(3, convention=convention, min_region_size=3)
    for scene in scenes:
        one.update(*scene)
        three.update(*scene)
    out, multi = one.compute(), three.compute()
    per_class = ("ap", "ap@0.5", "ap@0.25", "prec@0.5", "rec@0.5")
    for key in out:
        if key in per_class:
            assert out[key].shape == (1,), key
            torch.testing.assert_close(out[key], multi[key][:1], rtol=0, atol=0)
        else:
            assert out[key].dim() == 0
            torch.testing.assert_close(out[key], multi[key], rtol=0, atol=0)
    assert 0 < float(out["ap"][0]) < float(out["ap@0.5"][0]) < 0.95 and float(out["ap@0.5"][0]) > 0.1
    if convention == "greedy_voc":
        ap, _, _, _ = reference_scores(scenes, 1, GREEDY_VOC_THRESHOLDS)
        np.testing.assert_allclose(out["ap"].numpy(), ap.mean(0), atol=1e-12)
        np.testing.assert_allclose(out["ap@0.5"].numpy(), ap[0], atol=1e-12)
    assert sorted(one.named_scores(out)) == sorted(
        ["map", "map@0.5", "map@0.25", "mprec@0.5", "mrec@0.5"] + [f"{key}/chair" for key in per_class])

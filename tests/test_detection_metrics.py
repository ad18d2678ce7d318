"""Detection mAP: VOC AP on a hand-made curve, a hand-scored two-scene example, VoteNet's eval_det_cls written out
plainly (global sort, then greedy matching) on random scenes, and exact state merging / gathering."""
import contextlib
import copy
import math
import pickle

import numpy as np
import pytest
import torch

from lang3d.geometry.boxes import box_iou
from lang3d.metrics.detection import DetectionMAP, average_precision


def test_average_precision_by_hand():
    # envelope of precision (1, .5, 2/3, .5, .6) is (1, 2/3, 2/3, .6, .6); recall steps .25 at 1, 2/3 and .6
    recall = torch.tensor([0.25, 0.25, 0.5, 0.5, 0.75])
    precision = torch.tensor([1.0, 0.5, 2 / 3, 0.5, 0.6])
    assert average_precision(recall, precision) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.6, abs=1e-6)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


def cube(x, y=0.0, size=1.0):
    return [x, y, 0.0, size, size, size, 0.0]


def test_two_scenes_by_hand():
    # scene A: GT cubes at x=0 and x=5 (class 0). d1 (.9) = first cube: TP; d2 (.7) shifted 0.2: IoU .8/1.2 with the
    # already matched cube: FP; d3 (.4) shifted 0.5 from the second cube: IoU .5/1.5 = 1/3, TP at .25 only.
    # scene B: GT cube at x=0 (class 0), GT of class 2 never predicted; d4 (.8) far away: FP; d5 (.5) shifted
    # 0.1: IoU .9/1.1: TP. A class-1 prediction with no class-1 GT anywhere.
    preds = [dict(boxes=torch.tensor([cube(0), cube(0.2), cube(5.5)]), scores=torch.tensor([0.9, 0.7, 0.4]),
                  labels=torch.tensor([0, 0, 0])),
             dict(boxes=torch.tensor([cube(10, 10), cube(0.1), cube(0)]), scores=torch.tensor([0.8, 0.5, 0.6]),
                  labels=torch.tensor([0, 0, 1]))]
    targets = [dict(boxes=torch.tensor([cube(0), cube(5)]), labels=torch.tensor([0, 0])),
               dict(boxes=torch.tensor([cube(0), cube(3, 3)]), labels=torch.tensor([0, 2]))]
    metric = DetectionMAP(num_classes=3)
    metric.update(preds, targets)
    out = metric.compute()
    # class 0 by score: d1 TP, d4 FP, d2 FP, d5 TP, d3 TP@.25 / FP@.5; 3 GT
    # @.25: precision 1, 1/2, 1/3, 1/2, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1 -> AP 1/3 (1 + .6 + .6)
    # @.5:  precision 1, 1/2, 1/3, 1/2, 2/5 at recall 1/3, 1/3, 1/3, 2/3, 2/3 -> AP 1/3 (1 + .5)
    ap25, ap50 = (1 + 0.6 + 0.6) / 3, (1 + 0.5) / 3
    np.testing.assert_allclose(out["ap@0.25"].numpy(), [ap25, np.nan, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["ap@0.5"].numpy(), [ap50, np.nan, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["recall@0.25"].numpy(), [1.0, np.nan, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["recall@0.5"].numpy(), [2 / 3, np.nan, 0.0], atol=1e-6)
    assert float(out["map@0.25"]) == pytest.approx(ap25 / 2) and float(out["map@0.5"]) == pytest.approx(ap50 / 2)
    named = DetectionMAP(3, class_names=["chair", "table", "sofa"])
    named.update(preds, targets)
    scores = named.named_scores(named.compute())
    assert scores["ap@0.5/chair"] == pytest.approx(ap50) and "ap@0.5/table" not in scores


def test_duplicate_loses_even_with_another_free_ground_truth_nearby():
    # GT cubes at x=0 and x=0.6. d1 (.9) at x=0.1: IoU .9/1.1 and 1/3 -> TP on the first. d2 (.8) at x=0.2: IoU
    # .8/1.2 with the taken first cube, 3/7 with the free second: VoteNet takes the best GT, so FP -> AP .5
    preds = [dict(boxes=torch.tensor([cube(0.1), cube(0.2)]), scores=torch.tensor([0.9, 0.8]),
                  labels=torch.tensor([0, 0]))]
    targets = [dict(boxes=torch.tensor([cube(0), cube(0.6)]), labels=torch.tensor([0, 0]))]
    metric = DetectionMAP(1, iou_thresholds=(0.25,))
    metric.update(preds, targets)
    assert float(metric.compute()["map@0.25"]) == pytest.approx(0.5)


def test_tied_scores_count_false_positives_first_in_any_order():
    # a TP in scene A and a FP in scene B share score .5: precision 1/2 at recall 1 whatever the order -> AP .5
    hit = (dict(boxes=torch.tensor([cube(0)]), scores=torch.tensor([0.5]), labels=torch.tensor([0])),
           dict(boxes=torch.tensor([cube(0)]), labels=torch.tensor([0])))
    miss = (dict(boxes=torch.tensor([cube(0)]), scores=torch.tensor([0.5]), labels=torch.tensor([0])),
            dict(boxes=torch.zeros(0, 7), labels=torch.zeros(0, dtype=torch.int64)))
    for scenes in ((hit, miss), (miss, hit)):
        metric = DetectionMAP(1)
        metric.update([p for p, _ in scenes], [t for _, t in scenes])
        assert float(metric.compute()["map@0.5"]) == pytest.approx(0.5)


@pytest.mark.parametrize("oriented", [False, True])
def test_iou_exactly_at_the_threshold_does_not_match(oriented):
    # VoteNet's eval_det matches on ovmax > ovthresh. 5 m long boxes 3 m apart: intersection 2 m³, union 8 m³,
    # IoU exactly 0.25: no match at 0.25; 2.5 m apart, IoU 2.5 / 7.5 = 1/3: a match at 0.25 only
    target = [dict(boxes=torch.tensor([[0.0, 0, 0, 5, 1, 1, 0]]), labels=torch.tensor([0]))]
    for shift, ap25 in ((3.0, 0.0), (2.5, 1.0)):
        preds = [dict(boxes=torch.tensor([[shift, 0, 0, 5, 1, 1, 0]]), scores=torch.ones(1), labels=torch.tensor([0]))]
        metric = DetectionMAP(1, oriented=oriented)
        metric.update(preds, target)
        out = metric.compute()
        assert float(out["map@0.25"]) == ap25 and float(out["map@0.5"]) == 0.0


def random_scenes(rng, num_scenes, num_classes):
    preds, targets = [], []
    for _ in range(num_scenes):
        g = int(rng.integers(0, 6))
        gt = np.c_[rng.uniform(0, 3, (g, 3)), rng.uniform(0.5, 1.5, (g, 3)), rng.uniform(-np.pi, np.pi, g)]
        gt_labels = rng.integers(0, num_classes, g)
        copied = rng.integers(0, g, 2 * g) if g else np.zeros(0, dtype=np.int64)   # duplicates included
        near = gt[copied] + np.c_[rng.normal(0, 0.1, (2 * g, 3)), rng.normal(0, 0.05, (2 * g, 3)),
                                  rng.normal(0, 0.15, 2 * g)]
        near[:, 3:6] = np.abs(near[:, 3:6])
        clutter = np.c_[rng.uniform(0, 3, (3, 3)), rng.uniform(0.5, 1.5, (3, 3)), rng.uniform(-np.pi, np.pi, 3)]
        boxes = np.concatenate([near, clutter])
        labels = np.concatenate([gt_labels[copied], rng.integers(0, num_classes, 3)])
        relabel = rng.random(len(boxes)) < 0.2
        labels[relabel] = rng.integers(0, num_classes, relabel.sum())
        preds.append(dict(boxes=torch.as_tensor(boxes), scores=torch.as_tensor(rng.random(len(boxes))).float(),
                          labels=torch.as_tensor(labels)))
        targets.append(dict(boxes=torch.as_tensor(gt), labels=torch.as_tensor(gt_labels)))
    return preds, targets


def votenet_eval_det_cls(preds, targets, cls, threshold, oriented):
    """VoteNet's eval_det_cls: detections of all scenes sorted by score, each takes its best-IoU GT of the class
    in its scene; TP if IoU > threshold and that GT is still free. Returns (AP, final recall) with plain loops."""
    gt = {s: t["boxes"][t["labels"] == cls] for s, t in enumerate(targets)}
    used = {s: [False] * len(b) for s, b in gt.items()}
    dets = [(float(p["scores"][i]), s, p["boxes"][i]) for s, p in enumerate(preds)
            for i in range(len(p["scores"])) if p["labels"][i] == cls]
    dets.sort(key=lambda d: -d[0])
    npos = sum(len(b) for b in gt.values())
    if npos == 0:
        return math.nan, math.nan
    tp = []
    for _, s, box in dets:
        ious = [box_iou(box[None], g[None], oriented).item() for g in gt[s]]
        j = int(np.argmax(ious)) if ious else -1
        hit = j >= 0 and ious[j] > threshold and not used[s][j]
        if hit:
            used[s][j] = True
        tp.append(float(hit))
    if not tp:
        return 0.0, 0.0
    cum = np.cumsum(tp)
    recall, precision = cum / npos, cum / np.arange(1, len(tp) + 1)
    # VOC all-point AP with explicit loops
    mrec, mpre = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))
    return ap, recall[-1]


@pytest.mark.parametrize("oriented", [False, True])
def test_matches_votenet_eval_on_random_scenes(oriented):
    rng = np.random.default_rng(4)
    preds, targets = random_scenes(rng, 8, 4)
    metric = DetectionMAP(4, oriented=oriented)
    for i in range(0, 8, 3):                          # several updates of a few scenes each
        metric.update(preds[i:i + 3], targets[i:i + 3])
    out = metric.compute()
    for t in (0.25, 0.5):
        expected = np.array([votenet_eval_det_cls(preds, targets, k, t, oriented) for k in range(4)])
        np.testing.assert_allclose(out[f"ap@{t:g}"].numpy(), expected[:, 0], atol=1e-9)
        np.testing.assert_allclose(out[f"recall@{t:g}"].numpy(), expected[:, 1], atol=1e-9)
        assert float(out[f"map@{t:g}"]) == pytest.approx(np.nanmean(expected[:, 0]))
        assert 0.1 < float(out[f"map@{t:g}"]) < 0.95          # neither trivial nor perfect


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], equal_nan=True, rtol=0, atol=1e-12)


def test_merged_and_gathered_states_equal_one_pass():
    rng = np.random.default_rng(5)
    preds, targets = random_scenes(rng, 10, 3)
    whole = DetectionMAP(3)
    whole.update(preds, targets)
    expected = whole.compute()

    first, second = DetectionMAP(3), DetectionMAP(3)
    first.update(preds[:4], targets[:4])
    second.update(preds[4:], targets[4:])
    first.merge_state(second)
    assert_same(first.compute(), expected)

    # as under DDP: rank 1's states, gathered by torchmetrics' own sync code, reach rank 0; rank 2 saw no scene
    def as_rank0(*others):
        recorded = []
        for other in others:
            record = []
            other.dist_sync_fn = lambda t, group=None, record=record: record.append(t) or [t]
            other.distributed_available_fn = lambda: True
            with pytest.warns(UserWarning) if other.update_count == 0 else contextlib.nullcontext():
                other.compute()
            recorded.append(iter(record))
        return dict(dist_sync_fn=lambda t, group=None: [t] + [next(r) for r in recorded],
                    distributed_available_fn=lambda: True)

    rank1, rank2 = DetectionMAP(3), DetectionMAP(3)
    rank1.update(preds[6:], targets[6:])
    rank0 = DetectionMAP(3, **as_rank0(rank1, rank2))
    rank0.update(preds[:6], targets[:6])
    assert_same(rank0.compute(), expected)


def test_perfect_and_empty_predictions():
    rng = np.random.default_rng(6)
    _, targets = random_scenes(rng, 5, 3)
    perfect = [dict(boxes=t["boxes"], scores=torch.rand(len(t["labels"])), labels=t["labels"]) for t in targets]
    none = [dict(boxes=torch.zeros(0, 7), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
            for _ in targets]
    for oriented in (False, True):
        metric = DetectionMAP(3, oriented=oriented)
        metric.update(perfect, targets)
        out = metric.compute()
        assert float(out["map@0.5"]) == pytest.approx(1.0) and float(out["map@0.25"]) == pytest.approx(1.0)
        metric = DetectionMAP(3, oriented=oriented)
        metric.update(none, targets)
        out = metric.compute()
        assert float(out["map@0.5"]) == 0 and torch.all(out["recall@0.25"] == 0)


def test_oriented_matching_uses_headings():
    target = [dict(boxes=torch.tensor([[0.0, 0, 0, 2, 0.5, 1, 0]]), labels=torch.tensor([0]))]
    turned = [dict(boxes=torch.tensor([[0.0, 0, 0, 2, 0.5, 1, math.pi / 2]]), scores=torch.ones(1),
                   labels=torch.tensor([0]))]
    swapped = [dict(boxes=torch.tensor([[0.0, 0, 0, 0.5, 2, 1, math.pi / 2]]), scores=torch.ones(1),
                    labels=torch.tensor([0]))]
    for pred, oriented, ap in ((turned, True, 0.0), (turned, False, 1.0), (swapped, True, 1.0)):
        metric = DetectionMAP(1, iou_thresholds=(0.5,), oriented=oriented)
        metric.update(pred, target)
        assert float(metric.compute()["map@0.5"]) == pytest.approx(ap)


def test_bad_inputs_are_named():
    metric = DetectionMAP(2)
    box = torch.zeros(1, 7)
    with pytest.raises(ValueError, match="scores"):
        metric.update([dict(boxes=box, labels=torch.tensor([0]))], [dict(boxes=box, labels=torch.tensor([0]))])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metric.update([dict(boxes=box, scores=torch.ones(1), labels=torch.tensor([2]))],
                      [dict(boxes=box, labels=torch.tensor([0]))])
    with pytest.raises(ValueError, match="2 prediction dicts for 1"):
        metric.update([{}, {}], [{}])


def test_one_class_keeps_its_class_axis_and_names():
    """num_classes=1 (e.g. chairs only): per-class results stay [1] (torchmetrics squeezes one-element tensors),
    equal VoteNet's eval_det_cls and the multi-class path, and are logged under the class name."""
    rng = np.random.default_rng(9)
    preds, targets = random_scenes(rng, 8, 1)
    one, three = DetectionMAP(1, class_names=["chair"]), DetectionMAP(3)
    one.update(preds, targets)
    three.update(preds, targets)
    out, multi = one.compute(), three.compute()
    for t in (0.25, 0.5):
        assert out[f"ap@{t:g}"].shape == out[f"recall@{t:g}"].shape == (1,) and out[f"map@{t:g}"].dim() == 0
        ap, recall = votenet_eval_det_cls(preds, targets, 0, t, False)
        assert float(out[f"ap@{t:g}"][0]) == pytest.approx(ap, abs=1e-9) and 0.1 < ap < 0.95
        assert float(out[f"recall@{t:g}"][0]) == pytest.approx(recall, abs=1e-9)
        torch.testing.assert_close(out[f"ap@{t:g}"], multi[f"ap@{t:g}"][:1], rtol=0, atol=0)
        assert float(out[f"map@{t:g}"]) == float(multi[f"map@{t:g}"])
    assert sorted(one.named_scores(out)) == ["ap@0.25/chair", "ap@0.5/chair", "map@0.25", "map@0.5",
                                             "recall@0.25/chair", "recall@0.5/chair"]
    copied = copy.deepcopy(one)        # torchmetrics wraps compute afresh when a metric is copied or unpickled
    assert copied.compute()["ap@0.25"].shape == pickle.loads(pickle.dumps(one)).compute()["ap@0.25"].shape == (1,)

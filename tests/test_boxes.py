"""3D boxes: corners, IoU against an independent half-space-intersection volume (scipy) and hand cases, NMS
against a plain Python loop."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection

from lang3d.geometry.boxes import box_corners, box_iou, box_iou_axis_aligned, box_iou_oriented, nms_3d


def box_halfspaces(box):
    """The 6 faces of a box as scipy half-spaces [A | b] with A x + b <= 0."""
    cx, cy, cz, dx, dy, dz, h = box
    axes = np.array([[math.cos(h), math.sin(h), 0], [-math.sin(h), math.cos(h), 0], [0, 0, 1]])
    rows = []
    for n, half in zip(axes, (dx / 2, dy / 2, dz / 2)):
        for sign in (1, -1):
            rows.append([*(sign * n), -(sign * n @ [cx, cy, cz]) - half])
    return np.array(rows)


def iou_by_halfspaces(a, b):
    """Volume of the intersection polytope (scipy HalfspaceIntersection + ConvexHull) over the union."""
    hs = np.concatenate([box_halfspaces(a), box_halfspaces(b)])
    norm = np.linalg.norm(hs[:, :3], axis=1)
    # Chebyshev centre: the deepest interior point, maximising r with A x + r |A| <= -b
    res = linprog([0, 0, 0, -1], A_ub=np.c_[hs[:, :3], norm], b_ub=-hs[:, 3], bounds=[(None, None)] * 3 + [(0, None)])
    inter = 0.0
    if res.status == 0 and res.x[3] > 1e-7:
        inter = ConvexHull(HalfspaceIntersection(hs, res.x[:3]).intersections).volume
    return inter / (np.prod(a[3:6]) + np.prod(b[3:6]) - inter)


def random_boxes(rng, n, oriented=True):
    boxes = np.c_[rng.uniform(0, 2, (n, 3)), rng.uniform(0.3, 2, (n, 3)), rng.uniform(-math.pi, math.pi, n)]
    if not oriented:
        boxes[:, 6] = 0
    return torch.as_tensor(boxes)


def test_corners_follow_the_convention():
    box = torch.tensor([[1.0, 2.0, 3.0, 2.0, 4.0, 6.0, math.pi / 2]])
    corners = box_corners(box)[0]
    # box-frame (+1, +2) rotated by 90° counter-clockwise -> (-2, +1), plus the centre
    torch.testing.assert_close(corners[0], torch.tensor([-1.0, 3.0, 0.0]))
    torch.testing.assert_close(corners[6], torch.tensor([3.0, 1.0, 6.0]))
    torch.testing.assert_close(corners.mean(0), box[0, :3])
    bev = corners[:4, :2]
    signed_area = 0.5 * sum(bev[i, 0] * bev[(i + 1) % 4, 1] - bev[(i + 1) % 4, 0] * bev[i, 1] for i in range(4))
    assert float(signed_area) == pytest.approx(8.0)   # counter-clockwise, area dx * dy


def test_oriented_iou_matches_halfspace_volume_on_random_boxes():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 8), random_boxes(rng, 6)
    iou = box_iou_oriented(a, b).numpy()
    expected = np.array([[iou_by_halfspaces(x, y) for y in b.numpy()] for x in a.numpy()])
    assert (expected > 0.05).sum() >= 10 and (expected == 0).sum() >= 3   # the draw covers overlaps and misses
    np.testing.assert_allclose(iou, expected, atol=1e-9)
    torch.testing.assert_close(box_iou_oriented(b, a), box_iou_oriented(a, b).T, rtol=0, atol=1e-12)


def test_axis_aligned_iou_matches_halfspace_volume_and_oriented_at_heading_zero():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 7, oriented=False), random_boxes(rng, 5, oriented=False)
    expected = np.array([[iou_by_halfspaces(x, y) for y in b.numpy()] for x in a.numpy()])
    np.testing.assert_allclose(box_iou_axis_aligned(a, b).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(box_iou(a, b, oriented=True).numpy(), expected, atol=1e-9)
    # the axis-aligned IoU ignores headings
    turned = a.clone()
    turned[:, 6] = 1.0
    torch.testing.assert_close(box_iou(turned, b, oriented=False), box_iou_axis_aligned(a, b))


def test_hand_cases():
    def box(*values):
        return torch.tensor([values], dtype=torch.float64)

    unit = box(0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0)
    assert box_iou_oriented(unit, unit).item() == pytest.approx(1.0, abs=1e-12)
    far, touching = box(3.0, 0, 0, 1, 1, 1, 0), box(1.0, 0, 0, 1, 1, 1, 0)
    assert box_iou_oriented(unit, far).item() == 0 and box_iou_oriented(unit, touching).item() == 0
    assert box_iou_axis_aligned(unit, touching).item() == 0
    # a 2 x 1 box equals a 1 x 2 box turned by 90°
    long_x, long_y = box(0.5, -1.0, 2.0, 2.0, 1.0, 0.5, 0.3), box(0.5, -1.0, 2.0, 1.0, 2.0, 0.5, 0.3 + math.pi / 2)
    assert box_iou_oriented(long_x, long_y).item() == pytest.approx(1.0, abs=1e-12)
    # unit square against itself turned by 45°: a regular octagon of area 1 - 2 (1 - √2/2)² = 2√2 - 2,
    # IoU (2√2 - 2) / (2 - (2√2 - 2)) = 1/√2; raised by half its height: intersection √2 - 1, union 3 - √2
    diamond = box(0.0, 0.0, 0.0, 1.0, 1.0, 1.0, math.pi / 4)
    assert box_iou_oriented(unit, diamond).item() == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    diamond[0, 2] = 0.5
    raised = (math.sqrt(2) - 1) / (3 - math.sqrt(2))
    assert box_iou_oriented(unit, diamond).item() == pytest.approx(raised, abs=1e-12)
    # a box inside another: volume ratio
    inner = box(0.1, 0.1, 0.1, 0.5, 0.4, 0.5, 0.7)
    assert box_iou_oriented(unit, inner).item() == pytest.approx(0.1, abs=1e-12)


def test_degenerate_boxes_give_zero_not_nan():
    flat = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    unit = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    for oriented in (False, True):
        assert torch.equal(box_iou(flat, flat, oriented), torch.zeros(2, 2, dtype=torch.float32))
        assert torch.equal(box_iou(flat, unit, oriented), torch.zeros(2, 1, dtype=torch.float32))


def test_bad_boxes_are_rejected():
    with pytest.raises(ValueError, match=r"\[N,7\]"):
        box_iou_oriented(torch.zeros(3, 6), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="sizes"):
        box_corners(torch.tensor([[0.0, 0, 0, -1, 1, 1, 0]]))


def naive_nms(boxes, scores, threshold, oriented, labels):
    order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(labels[i] != labels[k] or box_iou(boxes[i:i + 1], boxes[k:k + 1], oriented).item() <= threshold
               for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("oriented", [False, True])
def test_nms_matches_a_plain_loop(oriented):
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 40, oriented).float()
    scores = torch.as_tensor(rng.integers(0, 10, 40)).float()   # many ties: lower index first
    labels = torch.as_tensor(rng.integers(0, 3, 40))
    for lab in (labels, None):
        keep = nms_3d(boxes, scores, 0.2, oriented=oriented, labels=lab)
        expected = naive_nms(boxes, scores, 0.2, oriented, lab if lab is not None else torch.zeros(40))
        assert keep.dtype == torch.int64 and keep.tolist() == expected
        assert 5 < len(keep) < 40     # suppression happened, and not of everything
    assert len(nms_3d(boxes, scores, 0.2, oriented, labels)) > len(nms_3d(boxes, scores, 0.2, oriented))

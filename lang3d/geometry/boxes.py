"""3D bounding boxes: corners, axis-aligned and oriented IoU, greedy (per-class) NMS. Plain PyTorch, CPU or CUDA.

Convention: boxes are ``[N,7]`` float tensors ``(cx, cy, cz, dx, dy, dz, heading)`` in metres, z up.
``dx, dy, dz`` are FULL sizes along the box's own axes; ``heading`` (radians) is the rotation about +z,
counter-clockwise seen from above: a point p of the box frame sits at ``R_z(heading) p + centre`` in the world.
Axis-aligned boxes have heading 0 (``box_iou_axis_aligned`` ignores the heading altogether).

Corner order of ``box_corners``: bottom face (z = cz - dz/2) then top face, each counter-clockwise seen from
above starting at the box-frame corner (+dx/2, +dy/2): (+,+), (-,+), (-,-), (+,-).
"""
from __future__ import annotations

import numpy as np
import torch

_UNIT_CORNERS = 0.5 * torch.tensor([[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1],
                                    [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]], dtype=torch.float64)
_PAIRS_PER_CHUNK = 1 << 16   # box pairs per batch of BEV clipping: bounds its memory to ~100 MB


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if not torch.is_tensor(boxes) or boxes.dim() != 2 or boxes.shape[1] != 7 or not boxes.is_floating_point():
        shape = tuple(boxes.shape) if torch.is_tensor(boxes) else type(boxes).__name__
        raise ValueError(f"{name}: boxes must be a float [N,7] tensor (cx, cy, cz, dx, dy, dz, heading), got {shape}")
    if (boxes[:, 3:6] < 0).any():
        raise ValueError(f"{name}: box sizes dx, dy, dz must be >= 0, got a minimum of {boxes[:, 3:6].min().item()}")


def _rotate_z(xy: torch.Tensor, heading: torch.Tensor) -> torch.Tensor:
    """xy [..., K, 2] rotated counter-clockwise by heading [...] radians."""
    c, s = torch.cos(heading)[..., None], torch.sin(heading)[..., None]
    x, y = xy[..., 0], xy[..., 1]
    return torch.stack([c * x - s * y, s * x + c * y], dim=-1)


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """boxes [N,7] -> corners [N,8,3] metres, in the order given in the module docstring."""
    _check_boxes("box_corners", boxes)
    local = _UNIT_CORNERS.to(boxes) * boxes[:, None, 3:6]
    xy = _rotate_z(local[..., :2], boxes[:, 6]) + boxes[:, None, :2]
    return torch.cat([xy, local[..., 2:] + boxes[:, None, 2:3]], dim=-1)


def _iou_from_volumes(inter: torch.Tensor, vol_a: torch.Tensor, vol_b: torch.Tensor) -> torch.Tensor:
    """IoU [N,M] from intersection volumes [N,M] and volumes [N], [M]; 0 where the union is empty."""
    union = vol_a[:, None] + vol_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def box_iou_axis_aligned(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [N,M] of the axis-aligned boxes a [N,7] and b [M,7] (headings ignored)."""
    _check_boxes("box_iou_axis_aligned", a)
    _check_boxes("box_iou_axis_aligned", b)
    lo_a, hi_a = a[:, :3] - a[:, 3:6] / 2, a[:, :3] + a[:, 3:6] / 2
    lo_b, hi_b = b[:, :3] - b[:, 3:6] / 2, b[:, :3] + b[:, 3:6] / 2
    extent = (torch.minimum(hi_a[:, None], hi_b[None]) - torch.maximum(lo_a[:, None], lo_b[None])).clamp(min=0)
    return _iou_from_volumes(extent.prod(-1), a[:, 3:6].prod(-1), b[:, 3:6].prod(-1))


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _inside(points: torch.Tensor, rect: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """points [..., K, 2] inside (boundary included, to eps) the BEV rectangles rect [..., 5] (cx, cy, dx, dy,
    heading) -> [..., K] bool."""
    local = _rotate_z(points - rect[..., None, :2], -rect[..., 4])
    return (local.abs() <= rect[..., None, 2:4] / 2 + eps[..., None, None]).all(-1)


def bev_intersection_area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection area [...] m² of BEV rectangles a, b [..., 5] (cx, cy, dx, dy, heading), broadcast.

    The intersection of two convex polygons is the convex hull of the corners of each inside the other and of
    the crossings of their edges; these (≤ 24) candidates all lie on its boundary, so sorting them by angle around
    their mean and applying the shoelace formula gives its area."""
    unit = _UNIT_CORNERS[:4, :2].to(a)
    ca = _rotate_z(unit * a[..., None, 2:4], a[..., 4]) + a[..., None, :2]   # [...,4,2] counter-clockwise
    cb = _rotate_z(unit * b[..., None, 2:4], b[..., 4]) + b[..., None, :2]
    ca, cb = torch.broadcast_tensors(ca, cb)
    scale = torch.maximum(a[..., 2:4].amax(-1), b[..., 2:4].amax(-1))
    eps = 1e-9 * scale.clamp(min=1.0)
    # edge i of a: p + t r, edge j of b: q + u s, crossing where t, u in [0, 1]
    p, r = ca[..., :, None, :], (ca.roll(-1, -2) - ca)[..., :, None, :]
    q, s = cb[..., None, :, :], (cb.roll(-1, -2) - cb)[..., None, :, :]
    denom = _cross(r, s)
    parallel = denom.abs() <= 1e-12 * scale[..., None, None].clamp(min=1.0) ** 2
    denom = torch.where(parallel, torch.ones_like(denom), denom)
    t, u = _cross(q - p, s) / denom, _cross(q - p, r) / denom
    cross_ok = ~parallel & (t >= -1e-9) & (t <= 1 + 1e-9) & (u >= -1e-9) & (u <= 1 + 1e-9)
    crossings = (p + t[..., None] * r).flatten(-3, -2)                      # [...,16,2]
    points = torch.cat([ca, cb, crossings], dim=-2)                         # [...,24,2]
    valid = torch.cat([_inside(ca, b, eps), _inside(cb, a, eps), cross_ok.flatten(-2)], dim=-1)
    count = valid.sum(-1)
    centre = (points * valid[..., None]).sum(-2) / count.clamp(min=1)[..., None]
    rel = points - centre[..., None, :]
    angle = torch.where(valid, torch.atan2(rel[..., 1], rel[..., 0]), torch.full_like(rel[..., 0], float("inf")))
    order = angle.argsort(dim=-1)
    rel = torch.gather(rel, -2, order[..., None].expand_as(rel))
    valid = torch.gather(valid, -1, order)
    rel = torch.where(valid[..., None], rel, rel[..., :1, :])   # unused slots repeat the first vertex: no area
    area = 0.5 * _cross(rel, rel.roll(-1, -2)).sum(-1).abs()
    return torch.where(count >= 3, area, torch.zeros_like(area))


def box_iou_oriented(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU [N,M] of the oriented boxes a [N,7] and b [M,7]: BEV rotated-rectangle intersection area × z overlap
    over the union volume; 0 for empty unions (degenerate boxes). Computed in float64, returned in a's dtype."""
    _check_boxes("box_iou_oriented", a)
    _check_boxes("box_iou_oriented", b)
    a64, b64 = a.double(), b.to(a.device, torch.float64)
    top = torch.minimum(a64[:, None, 2] + a64[:, None, 5] / 2, b64[None, :, 2] + b64[None, :, 5] / 2)
    bottom = torch.maximum(a64[:, None, 2] - a64[:, None, 5] / 2, b64[None, :, 2] - b64[None, :, 5] / 2)
    height = (top - bottom).clamp(min=0)
    # BEV areas only for pairs whose circumscribed circles meet and whose z ranges overlap
    radius_a, radius_b = a64[:, 3:5].norm(dim=-1) / 2, b64[:, 3:5].norm(dim=-1) / 2
    centre_distance = (a64[:, None, :2] - b64[None, :, :2]).norm(dim=-1)
    near = (height > 0) & (centre_distance <= radius_a[:, None] + radius_b[None, :])
    pair_a, pair_b = near.nonzero(as_tuple=True)
    bev_a, bev_b = a64[:, [0, 1, 3, 4, 6]], b64[:, [0, 1, 3, 4, 6]]
    area = torch.zeros_like(height)
    for ia, ib in zip(torch.split(pair_a, _PAIRS_PER_CHUNK), torch.split(pair_b, _PAIRS_PER_CHUNK)):
        area[ia, ib] = bev_intersection_area(bev_a[ia], bev_b[ib])
    inter = area * height
    return _iou_from_volumes(inter, a64[:, 3:6].prod(-1), b64[:, 3:6].prod(-1)).to(a.dtype)


def box_iou(a: torch.Tensor, b: torch.Tensor, oriented: bool) -> torch.Tensor:
    """IoU [N,M] of a [N,7] and b [M,7]: ``box_iou_oriented`` if ``oriented`` else ``box_iou_axis_aligned``."""
    return box_iou_oriented(a, b) if oriented else box_iou_axis_aligned(a, b)


def nms_3d(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, oriented: bool = False,
           labels: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression: going down the scores, keep a box unless a kept box overlaps it with
    IoU > ``iou_threshold`` (strictly, as VoteNet's ``nms_3d_faster`` and torchvision). With ``labels`` [N],
    boxes only suppress boxes of their own label (per-class NMS).

    boxes [N,7], scores [N] -> kept indices [K] int64 on boxes' device, by descending score (ties: lower index
    first). Builds the [N,N] IoU matrix, so it suits the hundreds of proposals of a scene."""
    _check_boxes("nms_3d", boxes)
    n = len(boxes)
    if scores.shape != (n,) or (labels is not None and labels.shape != (n,)):
        raise ValueError(f"nms_3d: {n} boxes need scores [N] and labels [N] (or None), got {tuple(scores.shape)}"
                         f" and {None if labels is None else tuple(labels.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    overlap = box_iou(sorted_boxes, sorted_boxes, oriented) > iou_threshold
    if labels is not None:
        sorted_labels = labels[order]
        overlap &= sorted_labels[:, None] == sorted_labels[None, :]
    overlap = overlap.cpu().numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]

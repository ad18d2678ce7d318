"""Point-E's evaluation network for P-FID / P-IS: PointNet++ SSG classification (Qi et al. 2017) in the layout of
point-e's ``point_e/evals/pointnet2_cls_ssg.py``, so its released ``pointnet.pt`` (``model_state_dict``,
``get_model(num_class=40, normal_channel=False, width_mult=2)``) loads with ``strict=True``.

Architecture (``width`` = point-e's ``width_mult``): three set abstractions (512 centres, radius 0.2, 32 samples,
MLP 64w-64w-128w; 128 centres, radius 0.4, 64 samples, MLP 128w-128w-256w; all points, MLP 256w-512w-1024w), each
MLP layer a 1×1 conv with bias, BatchNorm and ReLU, max over the group; then fc1 1024w→512w, bn1, ReLU, dropout
0.4, fc2 512w→256w, bn2 → **the feature vector** (before the ReLU), ReLU, dropout 0.4, fc3 → class logits.

Sampling and grouping as point-e computes them:
- farthest-point sampling starts at index ``b`` for the b-th cloud of the network's batch in eval mode (point-e's
  ``deterministic``; a random index in training) and picks the first maximum of the running distance;
- ball query: the ``k`` lowest point indices within ``radius`` of a centre (squared distance by the expansion
  ``-2 c·p + |c|² + |p|²``), slots left over filled with the first of them; grouped coordinates relative to the
  centre, then the previous level's features; the last level groups all points around the origin.
- ``normalize_clouds``: centred on the mean and divided by the largest radius (point-e's ``normalize_point_clouds``,
  with NumPy in the clouds' float32 as point-e); ``features_and_logits`` applies it, the raw ``forward`` does not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.convert import read_checkpoint
from lang3d.convert.point_e_pointnet import KIND as POINTNET_KIND
from lang3d.data.point_ops import farthest_point_sample, index_points
from lang3d.training.checkpoint import CheckpointMismatchError, load_tensors

# Point-e's feature extractor runs the network on batches of this many clouds per device; the FPS start index of
# a cloud is its position in that batch.
POINT_E_DEVICE_BATCH_SIZE = 64
BALL_QUERY_CHUNK = 1 << 24   # elements of the [B, centres, N] distance matrix computed at once (bounds memory)


def ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """xyz [B,N,3], centres [B,M,3] -> indices [B,M,min(k,N)] int64: per centre the lowest indices of points within
    ``radius`` (squared distance <= radius², computed as ``-2 c·p + |c|² + |p|²``), in increasing order, slots
    beyond the points found filled with the first index found."""
    b, n, _ = xyz.shape
    m, k = centres.shape[1], min(k, n)
    out = torch.empty(b, m, k, dtype=torch.int64, device=xyz.device)
    order = torch.arange(n, device=xyz.device)
    step = max(1, BALL_QUERY_CHUNK // max(1, m * n))
    for s in range(0, b, step):
        c, p = centres[s:s + step], xyz[s:s + step]
        sq = -2 * torch.matmul(c, p.transpose(1, 2))
        sq += torch.sum(c ** 2, -1)[:, :, None]
        sq += torch.sum(p ** 2, -1)[:, None, :]
        key = torch.where(sq > radius ** 2, n, order)                             # outside: sorts last
        idx = key.topk(k, dim=-1, largest=False, sorted=True).values
        out[s:s + step] = torch.where(idx == n, idx[..., :1], idx)
    return out


def point_e_farthest_points(xyz: torch.Tensor, count: int, start: torch.Tensor) -> torch.Tensor:
    """Point-e's FPS: xyz [B,N,3], start [B] -> indices [B,count]. With more samples than points, the picks after
    the N-th repeat index 0 (all distances are then zero and the first maximum is taken), as in point-e."""
    n = xyz.shape[1]
    idx = farthest_point_sample(xyz, min(count, n), start=start)
    return torch.cat([idx, idx.new_zeros(idx.shape[0], count - n)], 1) if count > n else idx


class SetAbstraction(nn.Module):
    """One single-scale-grouping level. ``centres`` None: one group of all points (point-e's ``group_all``).
    State-dict keys: ``mlp_convs.{i}`` (1×1 Conv2d with bias), ``mlp_bns.{i}`` (BatchNorm2d)."""

    def __init__(self, centres: int | None, radius: float | None, samples: int | None, in_channels: int,
                 channels: list[int]):
        super().__init__()
        self.centres, self.radius, self.samples = centres, radius, samples
        self.mlp_convs, self.mlp_bns = nn.ModuleList(), nn.ModuleList()
        for c in channels:
            self.mlp_convs.append(nn.Conv2d(in_channels, c, 1))
            self.mlp_bns.append(nn.BatchNorm2d(c))
            in_channels = c

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor | None,
                fps_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xyz [B,N,3], feats [B,N,C] or None, fps_start [B] int64 -> centres [B,M,3], features [B,M,C_out]."""
        if self.centres is None:
            centres = xyz.new_zeros(xyz.shape[0], 1, 3)
            grouped = xyz[:, None]                                                   # [B,1,N,3], not centred
            idx = None
        else:
            centres = index_points(xyz, point_e_farthest_points(xyz, self.centres, fps_start % xyz.shape[1]))
            idx = ball_query(xyz, centres, self.radius, self.samples)               # [B,M,k]
            grouped = index_points(xyz, idx) - centres[:, :, None]
        if feats is not None:
            grouped = torch.cat([grouped, feats[:, None] if idx is None else index_points(feats, idx)], -1)
        x = grouped.permute(0, 3, 1, 2)                                              # [B,C,M,k]
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            x = F.relu(bn(conv(x)))
        return centres, x.amax(-1).transpose(1, 2)


class PointNet2SSG(nn.Module):
    """Point-e's PointNet++ SSG classifier, xyz only. ``forward(points)`` on clouds already normalised
    (``normalize_clouds``) -> (logits [B,num_classes], features [B,256·width]); ``features`` / ``logits``
    normalise first. State-dict keys as point-e's ``get_model``: ``sa1``-``sa3``, ``fc1``, ``bn1``, ``fc2``,
    ``bn2``, ``fc3``."""

    def __init__(self, num_classes: int = 40, width: int = 2):
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"PointNet2SSG: num_classes and width must be >= 1, got {num_classes}, {width}")
        w = width
        self.num_classes, self.width, self.feature_dim = num_classes, width, 256 * w
        self.sa1 = SetAbstraction(512, 0.2, 32, 3, [64 * w, 64 * w, 128 * w])
        self.sa2 = SetAbstraction(128, 0.4, 64, 128 * w + 3, [128 * w, 128 * w, 256 * w])
        self.sa3 = SetAbstraction(None, None, None, 256 * w + 3, [256 * w, 512 * w, 1024 * w])
        self.fc1, self.bn1, self.drop1 = nn.Linear(1024 * w, 512 * w), nn.BatchNorm1d(512 * w), nn.Dropout(0.4)
        self.fc2, self.bn2, self.drop2 = nn.Linear(512 * w, 256 * w), nn.BatchNorm1d(256 * w), nn.Dropout(0.4)
        self.fc3 = nn.Linear(256 * w, num_classes)

    def forward(self, points: torch.Tensor, fps_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """points [B,N,3], normalised -> (logits [B,K], features [B,256w]). ``fps_start`` [B] int64:
        first FPS index per cloud; default: the cloud's position in the batch (eval) or random (training)."""
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
            raise ValueError(f"PointNet2SSG expects points [B,N,3] with N > 0, got {tuple(points.shape)}")
        b, n = points.shape[:2]
        if fps_start is None:
            fps_start = (torch.randint(0, n, (b,), device=points.device) if self.training
                         else torch.arange(b, device=points.device) % n)
        xyz, feats = self.sa1(points, None, fps_start)
        xyz, feats = self.sa2(xyz, feats, fps_start)
        _, feats = self.sa3(xyz, feats, fps_start)
        x = self.drop1(F.relu(self.bn1(self.fc1(feats[:, 0]))))
        features = self.bn2(self.fc2(x))
        return self.fc3(self.drop2(F.relu(features))), features

    def features(self, points: torch.Tensor, fps_start: torch.Tensor | None = None) -> torch.Tensor:
        """points [B,N,3] in any position and scale -> features [B,256w] (bn2(fc2(.)), point-e's P-FID features)."""
        return self(normalize_clouds(points), fps_start)[1]

    def logits(self, points: torch.Tensor, fps_start: torch.Tensor | None = None) -> torch.Tensor:
        """points [B,N,3] in any position and scale -> class logits [B,num_classes] (softmax: P-IS's p(y|x))."""
        return self(normalize_clouds(points), fps_start)[0]


def normalize_clouds(points: torch.Tensor) -> torch.Tensor:
    """Point-e's ``normalize_point_clouds``: points [B,N,3] minus their mean, divided by the largest distance to
    it, computed as point-e computes it: with NumPy's reductions, in the clouds' own precision (float64 clouds in
    float64, any other in float32: point-e's clouds are float32), then float32 on the input's device. Torch's
    float32 reductions or float64 differ by ~1e-6, enough to flip near-ties of farthest-point sampling and move a
    cloud's features (tests/data/point_e_evals). A cloud whose points all coincide is an error."""
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] == 0:
        raise ValueError(f"normalize_clouds expects points [B,N,3] with N > 0, got {tuple(points.shape)}")
    clouds = points.cpu()
    clouds = (clouds if clouds.dtype == torch.float64 else clouds.float()).numpy()
    centred = clouds - np.mean(clouds, axis=1, keepdims=True)
    radius = np.max(np.sqrt(np.sum(centred ** 2, axis=-1, keepdims=True)), axis=1, keepdims=True)   # [B,1,1]
    if not (radius > 0).all():
        raise ValueError(f"normalize_clouds: clouds {np.flatnonzero(~(radius > 0)).tolist()} have all points at one "
                         "position (no scale)")
    return torch.from_numpy(centred / radius).to(device=points.device, dtype=torch.float32)


@torch.no_grad()
def features_and_logits(network: PointNet2SSG, clouds: torch.Tensor, first_index: int = 0,
                        device_batch_size: int = POINT_E_DEVICE_BATCH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-e's ``PointNetClassifier.features_and_preds`` for clouds [B,N,3] that are items ``first_index`` ..
    ``first_index + B - 1`` of the evaluated stream: normalised, then FPS started at each cloud's position within
    its batch of ``device_batch_size`` -> (features [B,256w], logits [B,K]). Softmax of the logits is point-e's
    prediction."""
    if network.training:
        raise ValueError("features_and_logits: the network is in training mode; call .eval() first")
    start = (first_index + torch.arange(clouds.shape[0], device=clouds.device)) % device_batch_size
    logits, features = network(normalize_clouds(clouds), start % clouds.shape[1])
    return features, logits


def load_eval_pointnet(source: str | Path) -> PointNet2SSG:
    """Point-e's ``pointnet.pt`` (a path, or the tag ``point_e_pointnet`` for the file in the checkpoint folder), a
    checkpoint of the project's training (``python -m sepe.pointcloud_features``) or either's ``lang3d convert``
    output -> ``PointNet2SSG`` in eval mode, loaded strictly (``lang3d.convert.point_e_pointnet``: safe loading;
    besides tensors the file may hold numpy scalars). Width and class count are read from the tensor shapes."""
    conversion = read_checkpoint(source, [POINTNET_KIND])
    state = conversion.state
    try:
        width = state["sa1.mlp_convs.0.weight"].shape[0] // 64
        num_classes = state["fc3.weight"].shape[0]
    except KeyError as err:
        raise CheckpointMismatchError(f"{conversion.source}: no tensor {err} of point-e's PointNet++ SSG") from err
    network = PointNet2SSG(num_classes, max(width, 1))
    load_tensors(network, state, conversion.source, strict=True)
    return network.eval()

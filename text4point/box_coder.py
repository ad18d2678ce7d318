"""VoteNet's box parametrisation (Qi et al. 2019): heading as one of ``num_heading_bin`` angle bins plus a residual,
size as one of K mean-size clusters (one per class) plus a residual normalised by the cluster's size.

Boxes follow ``lang3d.geometry.boxes``: [N,7] (cx, cy, cz, dx, dy, dz, heading), full sizes in metres, heading in
radians counter-clockwise about +z.

Heading: bin b covers the angles within half a bin width w = 2π/NH of b·w; the residual r = angle - b·w lies in
[-w/2, w/2) and is stored normalised by w/2 (VoteNet's ``heading_residuals_normalized``: in [-1, 1)). Decoding
gives b·w + r wrapped into [-π, π). With NH = 1 (ScanNet, axis-aligned) the single bin holds every angle and the
residual is the angle itself (0 for axis-aligned boxes).

Size: cluster k of mean size m_k [3] (metres); the normalised residual is size / m_k - 1 (VoteNet's
``size_residual_label / mean_size``); decoding gives m_k · (1 + residual) (clamped at 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class EncodedBoxes:
    """centre [N,3] metres; heading_class [N] int64; heading_residual [N] normalised (see module docstring);
    size_class [N] int64; size_residual [N,3] normalised."""

    center: torch.Tensor
    heading_class: torch.Tensor
    heading_residual: torch.Tensor
    size_class: torch.Tensor
    size_residual: torch.Tensor


class BoxCoder:
    """Encode / decode boxes. mean_size [K,3] full sizes (metres, > 0) of the K size clusters (VoteNet: one per
    class, cluster = class label); num_heading_bin >= 1."""

    def __init__(self, mean_size: torch.Tensor, num_heading_bin: int):
        mean_size = torch.as_tensor(mean_size, dtype=torch.float32)
        if mean_size.dim() != 2 or mean_size.shape[1] != 3 or len(mean_size) == 0:
            raise ValueError(f"BoxCoder: mean_size must be [K,3], got {tuple(mean_size.shape)}")
        if not bool((mean_size > 0).all()) or not bool(torch.isfinite(mean_size).all()):
            raise ValueError(f"BoxCoder: mean sizes must be finite and > 0 metres, got {mean_size.tolist()}")
        if int(num_heading_bin) < 1:
            raise ValueError(f"BoxCoder: num_heading_bin must be >= 1, got {num_heading_bin}")
        self.mean_size = mean_size
        self.num_heading_bin = int(num_heading_bin)
        self.num_size_cluster = len(mean_size)

    @property
    def bin_width(self) -> float:
        """Angle covered by one heading bin, radians."""
        return 2 * math.pi / self.num_heading_bin

    # ---------------------------------------------------------------- heading
    def angle_to_class(self, heading: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """heading [...] radians (any value) -> bin [...] int64 and normalised residual [...] in [-1, 1)."""
        w = self.bin_width
        shifted = torch.remainder(heading + w / 2, 2 * math.pi)   # [0, 2π): bin b starts at b·w
        cls = torch.div(shifted, w, rounding_mode="floor").long().clamp(0, self.num_heading_bin - 1)
        residual = shifted - cls.to(shifted.dtype) * w - w / 2   # consistent with cls whatever the rounding
        return cls, residual / (w / 2)

    def class_to_angle(self, cls: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """bin [...] int, normalised residual [...] -> heading [...] radians wrapped into [-π, π)."""
        w = self.bin_width
        angle = cls.to(residual.dtype) * w + residual * (w / 2)
        return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi

    # ---------------------------------------------------------------- size
    def size_to_residual(self, size: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """size [N,3] metres and cluster [N] int64 -> normalised residual [N,3] = size / mean - 1."""
        self._check_clusters(cls)
        return size / self.mean_size.to(size)[cls] - 1

    def residual_to_size(self, cls: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """cluster [...] int64 and normalised residual [...,3] -> size [...,3] metres = mean · (1 + residual),
        clamped at 0 (a residual below -1, which no box encodes, gives an empty box)."""
        self._check_clusters(cls)
        return (self.mean_size.to(residual)[cls] * (1 + residual)).clamp(min=0)

    # ---------------------------------------------------------------- boxes
    def encode(self, boxes: torch.Tensor, labels: torch.Tensor) -> EncodedBoxes:
        """boxes [N,7], labels [N] int64 (size cluster = class label) -> ``EncodedBoxes``."""
        if boxes.dim() != 2 or boxes.shape[1] != 7 or labels.shape != (len(boxes),):
            raise ValueError(f"BoxCoder.encode: boxes must be [N,7] and labels [N], got {tuple(boxes.shape)} and "
                             f"{tuple(labels.shape)}")
        heading_class, heading_residual = self.angle_to_class(boxes[:, 6])
        labels = labels.long()
        return EncodedBoxes(boxes[:, :3], heading_class, heading_residual, labels,
                            self.size_to_residual(boxes[:, 3:6], labels))

    def decode(self, center: torch.Tensor, heading_class: torch.Tensor, heading_residual: torch.Tensor,
               size_class: torch.Tensor, size_residual: torch.Tensor) -> torch.Tensor:
        """center [...,3], heading_class [...], heading_residual [...], size_class [...], size_residual [...,3]
        -> boxes [...,7]."""
        heading = self.class_to_angle(heading_class, heading_residual)
        size = self.residual_to_size(size_class, size_residual)
        return torch.cat([center, size, heading[..., None]], dim=-1)

    def decode_scores(self, center: torch.Tensor, heading_scores: torch.Tensor, heading_residuals: torch.Tensor,
                      size_scores: torch.Tensor, size_residuals: torch.Tensor) -> torch.Tensor:
        """The boxes a network predicts (VoteNet's ``parse_predictions``): the best-scoring heading bin and size
        cluster with their own residuals. center [...,3], heading_scores / heading_residuals [...,NH],
        size_scores [...,K], size_residuals [...,K,3] -> boxes [...,7]."""
        heading_class = heading_scores.argmax(-1)
        size_class = size_scores.argmax(-1)
        heading_residual = heading_residuals.gather(-1, heading_class[..., None])[..., 0]
        index = size_class[..., None, None].expand(*size_class.shape, 1, 3)
        size_residual = size_residuals.gather(-2, index)[..., 0, :]
        return self.decode(center, heading_class, heading_residual, size_class, size_residual)

    def _check_clusters(self, cls: torch.Tensor) -> None:
        if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= self.num_size_cluster):
            raise ValueError(f"BoxCoder: size clusters must lie in [0, {self.num_size_cluster}), got "
                             f"{int(cls.min())}..{int(cls.max())}")

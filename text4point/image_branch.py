"""The 2D side of Text4Point pre-training: trainable decoder g2D (Eq. 13) over the frozen CLIP dense features, and
the geometry that ties feature-map cells to image pixels.

Cell geometry. A feature map of stride s made by strided convolutions / pooling that floor (CLIP's ResNet: s = 32;
the decoder's ×2^n bilinear upsampling of it: s = 32 / 2^n) has cell i's receptive centre at image row
s·i + s/2 - 1/2 (pixel edges at integers; the half pixel comes from the stem's stride-2, padding-1 convolution),
so the pixels nearest to it are its stride window [s·i, s·i + s) (the one row equidistant from two centres goes
to the upper-left cell). Rows and columns past s·h, s·w are covered by no cell: the trunk's floors dropped them
(a 240×320 image gives a 7×10 CLIP map covering rows 0-223).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_cells(rows: torch.Tensor, cols: torch.Tensor, stride: int,
                map_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell of a stride-``stride`` feature map of size ``map_hw`` = (h, w) whose stride window holds each pixel.

    rows, cols: [M] integer pixel coordinates. Returns (cell rows [M], cell cols [M], covered [M] bool); cells
    of uncovered pixels (row >= stride·h or col >= stride·w) are out of range and must be dropped."""
    h, w = map_hw
    cell_rows = torch.div(rows, stride, rounding_mode="floor")
    cell_cols = torch.div(cols, stride, rounding_mode="floor")
    covered = (rows >= 0) & (cols >= 0) & (cell_rows < h) & (cell_cols < w)
    return cell_rows, cell_cols, covered


def upsample_to_pixels(maps: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear upsampling of a stride-``stride`` map [B, C, h, w] to the pixels it covers [B, C, h·s, w·s], each
    cell's value placed at the middle of its stride window (``pixel_cells``)."""
    h, w = maps.shape[-2:]
    return F.interpolate(maps, size=(h * stride, w * stride), mode="bilinear", align_corners=False)


class ImageDecoder(nn.Module):
    """g2D: bilinear ×2 upsampling + 3×3 conv/BN/ReLU stages, a 1×1 projection to the decoder feature z2D and a
    depth head supervised by the free depth maps (appendix C).

    forward(h2d [B, d, h, w]) -> (z2d [B, C, h·2^n, w·2^n], depth [B, 1, h·2^n, w·2^n] metres, positive).
    ``upsampling`` = 2^n: the outputs' stride is the input map's stride / 2^n.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 256, num_upsamples: int = 3):
        super().__init__()
        self.upsampling = 2 ** num_upsamples
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True))
            for _ in range(num_upsamples))
        self.project = nn.Conv2d(width, out_channels, 1)
        self.depth_head = nn.Sequential(nn.Conv2d(width, 1, 1), nn.Softplus())

    def forward(self, h2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(h2d)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return self.project(x), self.depth_head(x)

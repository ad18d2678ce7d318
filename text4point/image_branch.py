"""The 2D side of Text4Point pre-training: frozen CLIP dense encoder f2D and trainable decoder g2D (Eq. 13)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageDecoder(nn.Module):
    """g2D: bilinear ×2 upsampling + 3×3 conv/BN/ReLU stages, a 1×1 projection to the decoder feature z2D and a
    depth head supervised by the free depth maps (appendix C).

    forward(h2d [B, d, h, w]) -> (z2d [B, C, h·2^n, w·2^n], depth [B, 1, h·2^n, w·2^n] metres, positive).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 256, num_upsamples: int = 3):
        super().__init__()
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

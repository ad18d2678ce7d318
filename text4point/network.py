"""The Text4Point 3D network: SR-UNet34 encoder → FC_expand → Text Querying Module → FC_reduce → α/β
aggregation → SR-UNet34 decoder (Eq. 3-4, 10-12). Shared by pre-training and fine-tuning."""
from __future__ import annotations

from dataclasses import dataclass

import MinkowskiEngine as ME
import torch
from torch import nn

from lang3d.models.backbones.res16unet import Res16UNet34C, sparse_features_like
from text4point.tqm import TextQueryingModule

ENCODER_STRIDE = 16  # tensor stride of the SR-UNet34 encoder output h3D (four stride-2 stages)


@dataclass
class Text4PointFeatures:
    """h3d: encoder output (stride 16, d' = 256 ch at width 1); h3d_expanded: [N16, d] FC_expand(h3D) (Eq. 4);
    z3d: decoder output (stride 1, out_channels), same rows as the input."""

    h3d: ME.SparseTensor
    h3d_expanded: torch.Tensor
    z3d: ME.SparseTensor


class Text4PointNet(nn.Module):
    """in_channels: input voxel features; out_channels: decoder output C; text_dim: CLIP embedding width d.

    use_tqm=False gives the plain SR-UNet (the ablation baseline): FC_expand is still computed for the
    encoder-level alignment, but nothing is added to h3D. width: the SR-UNet34's channel scale (1.0: published).
    """

    def __init__(self, in_channels: int, out_channels: int, text_dim: int, use_tqm: bool = True,
                 tqm_heads: int = 1, tqm_mlp_ratio: float = 4.0, alpha_init: float = 1.0, beta_init: float = 1.0,
                 stem_kernel_size: int = 3, bn_momentum: float = 0.05, width: float = 1.0):
        super().__init__()
        self.backbone = Res16UNet34C(in_channels, out_channels, stem_kernel_size=stem_kernel_size,
                                     bn_momentum=bn_momentum, width=width)
        d_enc = self.backbone.encoder_channels
        self.fc_expand = nn.Linear(d_enc, text_dim)
        self.use_tqm = use_tqm
        if use_tqm:
            self.tqm = TextQueryingModule(text_dim, tqm_heads, tqm_mlp_ratio)
            self.fc_reduce = nn.Linear(text_dim, d_enc)
            self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
            self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, x: ME.SparseTensor, text: torch.Tensor | None) -> Text4PointFeatures:
        """x: input voxels; text: [K, d] class text embeddings (ignored when use_tqm is False)."""
        h3d, skips = self.backbone.encode(x)
        expanded = self.fc_expand(h3d.F)
        if self.use_tqm:
            if text is None:
                raise ValueError("Text4PointNet with use_tqm=True needs the class text embeddings")
            reduced = self.fc_reduce(self.tqm(expanded, text))
            aggregated = sparse_features_like(h3d, self.alpha * h3d.F + self.beta * reduced)
        else:
            aggregated = h3d
        return Text4PointFeatures(h3d, expanded, self.backbone.decode(aggregated, skips))

"""3D encoders of Point-Bind, in plain PyTorch (FPS and kNN from ``lang3d.data.point_ops``, no CUDA extension).

- ``PointBERTEncoder``: FPS + kNN grouping (512 groups x 32 points), a mini-PointNet tokeniser per group, a
  12-layer transformer (width 384, 6 heads) with centre position embeddings added before every block, and
  concat(cls token, max over tokens) -> 768-d.
- ``I2PMAEEncoder``: three stages of point tokens (512/256/64 groups of 48/24/24, dims 96/192/384, 5 blocks each,
  6 heads, attention restricted to centres within 0.24/0.48/0.96), each stage's tokens merged by a mini-PointNet
  over the kNN of the next stage's FPS centres; LayerNorm, then mean + max over tokens (summed) -> 384-d.

Input: points [B,N,3] float32, centred and scaled into the unit sphere (as the datamodules serve them).
Every size is a constructor argument (tests use tiny ones); defaults are the paper's.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from lang3d.data.point_ops import farthest_point_sample, index_points, knn


class Groups(NamedTuple):
    """centres [B,G,3], neighbourhoods [B,G,k,3] (relative to their centre), index [B,G,k] into the input."""

    centres: torch.Tensor
    neighbourhoods: torch.Tensor
    index: torch.Tensor


def group_points(xyz: torch.Tensor, num_groups: int, group_size: int, start: int | torch.Tensor = 0) -> Groups:
    """FPS picks ``num_groups`` centres of xyz [B,N,3] (from index ``start``: int or [B]); each group is the
    ``group_size`` nearest input points of its centre (nearest first, the centre itself included)."""
    centre_idx = farthest_point_sample(xyz, num_groups, start)
    centres = index_points(xyz, centre_idx)
    idx = knn(centres, xyz, group_size)
    return Groups(centres, index_points(xyz, idx) - centres.unsqueeze(2), idx)


class MiniPointNet(nn.Module):
    """Shared per-point MLP, max-pooled, global feature concatenated back, second MLP, max-pooled again.

    [B,G,k,C_in] -> [B,G,C_out]; invariant to the order of the k points. ``hidden`` = (h1, h2, h3):
    conv C_in->h1, BN, ReLU, conv h1->h2 | max | concat [global, local] (2·h2) -> h3, BN, ReLU, conv h3->C_out.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: tuple[int, int, int] = (128, 256, 512)):
        super().__init__()
        h1, h2, h3 = hidden
        self.out_channels = out_channels
        self.first = nn.Sequential(nn.Conv1d(in_channels, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
                                   nn.Conv1d(h1, h2, 1))
        self.second = nn.Sequential(nn.Conv1d(2 * h2, h3, 1), nn.BatchNorm1d(h3), nn.ReLU(inplace=True),
                                    nn.Conv1d(h3, out_channels, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, k, c = groups.shape
        x = self.first(groups.reshape(b * g, k, c).transpose(1, 2))            # [BG, h2, k]
        x = torch.cat([x.amax(2, keepdim=True).expand(-1, -1, k), x], dim=1)   # [BG, 2·h2, k]
        return self.second(x).amax(2).reshape(b, g, self.out_channels)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (ratio 4, GELU), stochastic depth.
    ``mask`` [B,T,T] bool (True: may attend) or None."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.unsqueeze(1))
        x = x + self.drop_path(self.proj(attn.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _position_mlp(hidden: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear and conv weights, zero biases, unit LayerNorm (as Point-BERT/I2P-MAE)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PointBERTEncoder(nn.Module):
    """Point-BERT style encoder: points [B,N,3] -> [B, 2·width] (cls token ‖ max over group tokens).

    Args: num_groups / group_size (FPS centres, kNN points per group), tokenizer_dim and tokenizer_hidden
    (mini-PointNet, then a linear map to ``width``), width / depth / heads of the transformer, drop_path (rate
    of the last block; linear from 0), pos_hidden (hidden width of the centre position MLP).
    """

    def __init__(self, num_groups: int = 512, group_size: int = 32, tokenizer_dim: int = 256,
                 tokenizer_hidden: tuple[int, int, int] = (128, 256, 512), width: int = 384, depth: int = 12,
                 heads: int = 6, drop_path: float = 0.1, pos_hidden: int = 128):
        super().__init__()
        self.num_groups, self.group_size = num_groups, group_size
        self.out_dim = 2 * width
        self.tokenizer = MiniPointNet(3, tokenizer_dim, tuple(tokenizer_hidden))
        self.reduce = nn.Linear(tokenizer_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = _position_mlp(pos_hidden, width)
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(Block(width, heads, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(width)
        _init_weights(self)

    def forward(self, points: torch.Tensor, fps_start: int | torch.Tensor = 0) -> torch.Tensor:
        """points [B,N,3] -> features [B, out_dim]; ``fps_start``: first FPS index (int or [B])."""
        groups = group_points(points, self.num_groups, self.group_size, fps_start)
        tokens = self.reduce(self.tokenizer(groups.neighbourhoods))
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(groups.centres)], dim=1)
        for block in self.blocks:
            x = block(x + pos)
        x = self.norm(x)
        return torch.cat([x[:, 0], x[:, 1:].amax(1)], dim=-1)


class I2PMAEEncoder(nn.Module):
    """I2P-MAE style hierarchical encoder: points [B,N,3] -> [B, dims[-1]] (mean + max of the last stage's
    normalised tokens).

    Stage s takes ``num_groups[s]`` FPS centres of the previous stage's centres (of the input points for s = 0)
    and their ``group_sizes[s]`` nearest neighbours among those; stage 0 embeds the neighbourhoods' relative
    xyz, later stages merge the previous stage's tokens, both with a mini-PointNet. Then ``depths[s]`` blocks
    of width ``dims[s]``, attention restricted to centres closer than ``local_radius[s]`` (None or <= 0: global),
    with centre position embeddings added before every block.
    """

    def __init__(self, num_groups: tuple[int, ...] = (512, 256, 64), group_sizes: tuple[int, ...] = (48, 24, 24),
                 dims: tuple[int, ...] = (96, 192, 384), depths: tuple[int, ...] = (5, 5, 5), heads: int = 6,
                 local_radius: tuple[float | None, ...] | None = (0.24, 0.48, 0.96),
                 tokenizer_hidden: tuple[int, int, int] = (128, 256, 512), drop_path: float = 0.1):
        super().__init__()
        stages = len(num_groups)
        radius = tuple(local_radius) if local_radius is not None else (None,) * stages
        if not stages or any(len(v) != stages for v in (group_sizes, dims, depths, radius)):
            raise ValueError(f"num_groups, group_sizes, dims, depths and local_radius need one entry per stage, got "
                             f"{num_groups}, {group_sizes}, {dims}, {depths}, {radius}")
        self.num_groups, self.group_sizes, self.radius = tuple(num_groups), tuple(group_sizes), radius
        self.out_dim = dims[-1]
        self.embed = nn.ModuleList(
            MiniPointNet(3, dims[0], tuple(tokenizer_hidden)) if s == 0 else
            MiniPointNet(dims[s - 1], dims[s], (dims[s - 1], dims[s - 1], dims[s])) for s in range(stages))
        self.pos_embed = nn.ModuleList(_position_mlp(d, d) for d in dims)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(dims[s], heads, drop_path=rates[sum(depths[:s]) + i]) for i in range(depths[s]))
            for s in range(stages))
        self.norm = nn.LayerNorm(dims[-1])
        _init_weights(self)

    def forward(self, points: torch.Tensor, fps_start: int | torch.Tensor = 0) -> torch.Tensor:
        """points [B,N,3] -> features [B, out_dim]; ``fps_start``: first FPS index of stage 0 (int or [B])."""
        xyz, x = points, None
        for s, blocks in enumerate(self.stages):
            groups = group_points(xyz, self.num_groups[s], self.group_sizes[s], fps_start if s == 0 else 0)
            grouped = groups.neighbourhoods if s == 0 else index_points(x, groups.index)  # [B,G,k,C]
            x = self.embed[s](grouped)
            xyz = groups.centres
            mask = None
            if self.radius[s] is not None and self.radius[s] > 0:
                mask = torch.cdist(xyz, xyz, compute_mode="donot_use_mm_for_euclid_dist") < self.radius[s]
            pos = self.pos_embed[s](xyz)
            for block in blocks:
                x = block(x + pos, mask)
        x = self.norm(x)
        return x.mean(1) + x.amax(1)


ENCODERS = {"pointbert": PointBERTEncoder, "i2pmae": I2PMAEEncoder}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """``ENCODERS[name](**kwargs)``; the result has ``out_dim`` (feature width)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown point encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)

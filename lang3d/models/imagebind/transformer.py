"""ImageBind's trunk: a stack of pre-norm transformer blocks (its ``SimpleTransformer`` at inference).

Every LayerNorm of the trunk has eps 1e-6 (open_clip's ViT-H-14 uses 1e-5); the MLP is width -> 4·width -> width with
exact (erf) GELU; attention is ``torch.nn.MultiheadAttention`` with biases, and for audio a learned key / value bias
token (``add_bias_kv``). Drop-path is left out: the towers are frozen and only run in eval mode, where it is the
identity.
"""
from __future__ import annotations

import torch
from torch import nn

NORM_EPS = 1e-6


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` on tokens [B,L,width]."""

    def __init__(self, width: int, heads: int, bias_kv: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=bias_kv, batch_first=True)
        self.norm2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.norm2(x))


class Trunk(nn.Module):
    """``layers`` blocks on tokens [B,L,width] -> [B,L,width], after a LayerNorm when ``pre_norm`` (vision).

    ``attn_mask``: additive float mask [L,L] (the text tower's causal mask) or None."""

    def __init__(self, width: int, layers: int, heads: int, pre_norm: bool = False, bias_kv: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"trunk width {width} is not divisible by its {heads} heads")
        self.pre_norm = nn.LayerNorm(width, eps=NORM_EPS) if pre_norm else None
        self.blocks = nn.ModuleList(Block(width, heads, bias_kv) for _ in range(layers))

    def forward(self, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_norm(tokens) if self.pre_norm is not None else tokens
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Additive causal mask [L,L]: 0 on and below the diagonal, -inf above (a token attends to itself and earlier)."""
    return torch.full((length, length), float("-inf"), device=device).triu(1)

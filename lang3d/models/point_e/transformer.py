"""Point-E's diffusion transformer backbone: time embedding, per-head q|k|v attention, pre-LN blocks.

Module and parameter names follow openai/point-e so that official state dicts load unchanged
(``time_embed.c_fc``, ``backbone.resblocks.{i}.attn.c_qkv``, ``ln_pre``, ``ln_post``, ``input_proj``, ...).
Points carry no positional embedding: the model is permutation-equivariant over points, and the time token
plus any condition tokens are told apart only by their content.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Most hidden activations per MLP block in the inference path (1536 tokens of base40M's 2048: 12.6 MB in fp32).
MLP_BLOCK_FLOATS = 1536 * 2048


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps: t [B] (int or float steps) -> [B, dim] float32.

    First half ``cos(t * f_i)``, second half ``sin(t * f_i)`` with ``f_i = max_period ** (-i / half)``,
    i = 0..half-1; an odd ``dim`` gets a trailing zero.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def init_linear(layer: nn.Linear, std: float) -> None:
    """Point-E's init: weight ~ N(0, std), bias 0."""
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def qkv_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention on packed projections qkv [B,T,3*width] -> [B,T,width].

    The last axis is viewed as ``(heads, 3*attn_ch)`` and each head's slice is split into q | k | v
    (Point-E's layout, unlike ``nn.MultiheadAttention``'s three [Q|K|V] blocks). Weights
    ``softmax(q.k / sqrt(attn_ch))``, equal to Point-E's scaling of q and k by ``attn_ch ** -0.25`` each.
    """
    b, n, three_width = qkv.shape
    if three_width % (3 * heads):
        raise ValueError(f"qkv width {three_width} is not divisible by 3 * heads = {3 * heads}")
    attn_ch = three_width // (3 * heads)
    q, k, v = qkv.view(b, n, heads, 3 * attn_ch).transpose(1, 2).split(attn_ch, dim=-1)  # [B,H,T,C] each
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, heads * attn_ch)


def add_linear_(out: torch.Tensor, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``out += layer(x)`` in place: out [R, out_features], x [R, in_features]; returns out.

    A plain ``nn.Linear`` accumulates inside its matmul (``addmm`` with out as input and output, no [R, out]
    temporary); any other layer (a ``LoRALinear``, whose low-rank update is part of the layer) is called.
    """
    if type(layer) is nn.Linear:
        torch.addmm(out, x, layer.weight.t(), out=out)
        return out if layer.bias is None else out.add_(layer.bias)
    return out.add_(layer(x))


class MultiheadAttention(nn.Module):
    """``c_qkv`` (width -> 3*width) -> per-head q|k|v attention -> ``c_proj``. [B,T,width] -> [B,T,width]."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        init_linear(self.c_qkv, init_scale)
        init_linear(self.c_proj, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(qkv_attention(self.c_qkv(x), self.heads))


class MLP(nn.Module):
    """``c_fc`` (width -> 4*width) -> exact GELU -> ``c_proj``. [..., width] -> [..., width]."""

    def __init__(self, width: int, init_scale: float):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)
        self.gelu = nn.GELU()
        init_linear(self.c_fc, init_scale)
        init_linear(self.c_proj, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``. [B,T,width] -> [B,T,width]."""

    def __init__(self, width: int, heads: int, init_scale: float):
        super().__init__()
        self.attn = MultiheadAttention(width, heads, init_scale)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = MLP(width, init_scale)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    @torch.no_grad()
    def update_(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in place on a contiguous x [B,T,width], without autograd (inference; not under autocast).

        The projections back to the residual stream accumulate into x (``add_linear_``): plain Linear layers
        inside their matmuls, which saves two [B,T,width] temporaries and a pass over each; LoRA-wrapped layers
        are called, so their low-rank update counts as in ``forward``. The MLP runs over equal blocks of tokens
        whose 4·width hidden activations take at most ``MLP_BLOCK_FLOATS`` floats, so the allocator reuses that
        memory instead of mapping (and page-faulting) fresh [B·T, 4·width] buffers; few blocks, as each adds
        parallel regions. Returns x.
        """
        flat = x.view(-1, x.shape[-1])
        heads = qkv_attention(self.attn.c_qkv(self.ln_1(x)), self.attn.heads).view_as(flat)
        add_linear_(flat, heads, self.attn.c_proj)
        normed = self.ln_2(flat)
        blocks = -(-flat.shape[0] * self.mlp.c_fc.out_features // MLP_BLOCK_FLOATS)    # ceil
        rows = max(1, -(-flat.shape[0] // max(blocks, 1)))
        for start in range(0, flat.shape[0], rows):
            hidden = self.mlp.gelu(self.mlp.c_fc(normed[start:start + rows]))
            add_linear_(flat[start:start + rows], hidden, self.mlp.c_proj)
        return x


class Transformer(nn.Module):
    """``layers`` residual attention blocks (``resblocks``); Linear weights ~ N(0, init_scale / sqrt(width)).

    Without autograd and autocast (sampling) the blocks update one copy of the input in place
    (``ResidualAttentionBlock.update_``): the same math with fewer temporaries, faster on CPUs.
    """

    def __init__(self, width: int, layers: int, heads: int, init_scale: float = 0.25):
        super().__init__()
        self.width = width
        std = init_scale / math.sqrt(width)
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, std) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            for block in self.resblocks:
                x = block(x)
            return x
        x = x.clone(memory_format=torch.contiguous_format)  # inference: one residual stream, updated in place
        for block in self.resblocks:
            block.update_(x)
        return x


class PointDiffusionTransformer(nn.Module):
    """Unconditional Point-E denoiser (``base40M-uncond``) and the shared body of the conditional models.

    ``forward(x [B,C_in,N], t [B]) -> [B,C_out,N]``: tokens ``[time, points]``. N may differ from ``n_ctx``
    (the number of points the model was trained on): there is no positional embedding.
    """

    def __init__(self, input_channels: int = 6, output_channels: int = 12, n_ctx: int = 1024, width: int = 512,
                 layers: int = 12, heads: int = 8, init_scale: float = 0.25):
        super().__init__()
        self.input_channels, self.output_channels, self.n_ctx = input_channels, output_channels, n_ctx
        self.width = width
        self.time_embed = MLP(width, init_scale / math.sqrt(width))
        self.ln_pre = nn.LayerNorm(width)
        self.backbone = Transformer(width, layers, heads, init_scale)
        self.ln_post = nn.LayerNorm(width)
        self.input_proj = nn.Linear(input_channels, width)
        self.output_proj = nn.Linear(width, output_channels)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise ValueError unless x is float [B, input_channels, N] and t is [B]."""
        if x.ndim != 3 or x.shape[1] != self.input_channels or not x.is_floating_point():
            raise ValueError(f"{type(self).__name__}: x must be float [B, {self.input_channels}, N], "
                             f"got {tuple(x.shape)} {x.dtype}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"{type(self).__name__}: t must be [B] = [{x.shape[0]}] diffusion steps, "
                             f"got {tuple(t.shape)}")

    def time_token(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion steps t [B] -> time token [B, 1, width]."""
        return self.time_embed(timestep_embedding(t, self.width).to(self.input_proj.weight.dtype))[:, None]

    def forward_tokens(self, x: torch.Tensor, prefix: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the backbone on ``[*prefix, input_proj(points)]`` and read out the point tokens.

        x [B,C_in,N]; prefix: token tensors [B,L_i,width] in order (the time token among them).
        Returns [B,C_out,N]: ``output_proj(ln_post(...))`` of the last N tokens.
        """
        h = torch.cat([*prefix, self.input_proj(x.permute(0, 2, 1))], dim=1)
        h = self.ln_post(self.backbone(self.ln_pre(h)))
        return self.output_proj(h[:, h.shape[1] - x.shape[2]:]).permute(0, 2, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t)
        return self.forward_tokens(x, [self.time_token(t)])

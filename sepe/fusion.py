"""SEPE's fusion of CLIP text and image features into base40M's condition tokens (paper Sec. 3.1).

Both options map the CLIP ViT-L/14 image grid ``[B,256,1024]`` and text features to ``[B,256,512]``: the tensor
that ``CLIPGridPointDiffusionTransformer.embed_grid`` would produce. The denoiser therefore keeps base40M's token
layout ``[time, 256 condition tokens, points]`` (and the upsampler's ``[time, 256, low-res, new]``), so its
pretrained weights stay meaningful; ``forward_with_condition`` runs a model that way.

Classifier-free guidance: in training each sample's grid and text are zeroed together with probability
``cond_drop_prob`` (before any normalisation, as base40M drops its grid); at sampling the unconditional branch
is the fusion of a zero grid and zero text.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lang3d.lora import LoRALinear
from lang3d.point_e.models import CLIPGridPointDiffusionTransformer, CLIPGridUpsamplePointDiffusionTransformer


def drop_pair(a: torch.Tensor, b: torch.Tensor, p: float, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free dropout of two conditions at once: in training, zero sample i of both a [B,...] and
    b [B,...] with probability p (one draw per sample)."""
    if not training or p == 0.0:
        return a, b
    keep = (torch.rand(a.shape[0], device=a.device) >= p).to(a.dtype)
    return a * keep.view(-1, *([1] * (a.ndim - 1))), b * keep.view(-1, *([1] * (b.ndim - 1))).to(b.dtype)


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {p}")
    return float(p)


def _check_grid(name: str, grid: torch.Tensor, grid_width: int) -> None:
    if grid.ndim != 3 or grid.shape[2] != grid_width or not grid.is_floating_point():
        raise ValueError(f"{name}: grid must be float [B, T, {grid_width}] (CLIP image grid), got "
                         f"{tuple(grid.shape)} {grid.dtype}")


class ConcatFusion(nn.Module):
    """Option A: text vector broadcast to every grid patch, concatenated with the grid, then an MLP.

    ``forward(grid [B,T,grid_width], text [B,text_width]) -> [B,T,out_width]`` with ``text`` the unit-norm CLIP
    text vector. Input per patch: ``[LayerNorm(grid_n), sqrt(text_width) · text]`` (the text scaled as base40M-textvec
    scales its vector, to the LayerNorm's unit scale) -> Linear -> GELU -> Linear. With ``lora_rank`` set (paper:
    LoRALinear in the fusion MLP, rank 8) both Linear layers are LoRALinear around frozen, randomly initialised
    bases; ``lora_rank=None`` makes them plain trainable Linear layers.
    """

    def __init__(self, grid_width: int = 1024, text_width: int = 768, out_width: int = 512, hidden_width: int = 512,
                 lora_rank: int | None = 8, lora_alpha: float | None = None, cond_drop_prob: float = 0.1):
        super().__init__()
        self.grid_width, self.text_width, self.out_width = grid_width, text_width, out_width
        self.cond_drop_prob = _check_p(cond_drop_prob)
        self.grid_norm = nn.LayerNorm(grid_width)
        layers = [nn.Linear(grid_width + text_width, hidden_width), nn.Linear(hidden_width, out_width)]
        if lora_rank is not None:
            layers = [LoRALinear(layer, rank=lora_rank, alpha=lora_alpha) for layer in layers]
        self.fc1, self.fc2 = layers
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        _check_grid(type(self).__name__, grid, self.grid_width)
        if tuple(text.shape) != (grid.shape[0], self.text_width):
            raise ValueError(f"{type(self).__name__}: text must be the CLIP text vector [B, {self.text_width}] with "
                             f"B = {grid.shape[0]}, got {tuple(text.shape)}")
        grid, text = drop_pair(grid, text, self.cond_drop_prob, self.training)
        text = math.sqrt(self.text_width) * text.to(grid.dtype)
        x = torch.cat([self.grid_norm(grid), text[:, None].expand(-1, grid.shape[1], -1)], dim=-1)
        return self.fc2(self.act(self.fc1(x)))


class CrossAttentionFusion(nn.Module):
    """Option B: image-to-text cross-attention, attention pooling, Linear + LayerNorm, as 256 condition tokens.

    ``forward(grid [B,T,grid_width], text_tokens [B,L,text_width], text_mask [B,L] bool | None) -> [B,T,width]``.

    1. Image tokens ``x_n = Linear(LayerNorm(grid_n))`` (the structure of base40M's ``clip_embed``, which
       ``load_point_e_clip_embed`` copies in).
    2. ``attend``: multi-head cross-attention, queries from the image tokens, keys/values from the CLIP text
       token states, padding (``text_mask`` False) masked out, then ``F_n = x_n + out_proj(attn_n)``. Attending over
       the token *sequence* keeps the softmax non-trivial (over a single text vector it is identically 1 and the
       query/key projections get no gradient). The residual keeps each patch's image content in F_n; without it
       every F_n would be a mixture of text values only, and the image geometry the paper fuses would be lost.
    3. ``pool``: ``alpha_n = softmax_n(q · F_n / sqrt(width))`` with a learnable q, ``c = sum_n alpha_n F_n``
       (paper, Sec. 3.1), then ``f = LayerNorm(Linear(c))``.
    4. Output tokens ``F_n + f``. The paper pools "to preserve spatial information" and notes that f "captures
       spatially-aware features from the image tokens"; Option A keeps one condition per patch "to not lose the
       spatial information for reconstruction", and base40M was trained on 256 per-patch tokens. So the 256
       attended tokens are kept, one per patch, and the pooled fused vector f is added to each as the global,
       relevance-weighted context. Broadcasting f alone would make all 256 tokens identical (no spatial
       information); appending it as a 257th token would change base40M's token layout. The backbone's ``ln_pre``
       normalises each token, so the sum needs no further scaling.
    """

    def __init__(self, grid_width: int = 1024, text_width: int = 768, width: int = 512, heads: int = 8,
                 cond_drop_prob: float = 0.1):
        super().__init__()
        if width % heads:
            raise ValueError(f"CrossAttentionFusion: width {width} is not divisible by heads {heads}")
        self.grid_width, self.text_width, self.width, self.heads = grid_width, text_width, width, heads
        self.cond_drop_prob = _check_p(cond_drop_prob)
        self.image_embed = nn.Sequential(nn.LayerNorm(grid_width), nn.Linear(grid_width, width))
        self.query_norm = nn.LayerNorm(width)
        self.text_norm = nn.LayerNorm(text_width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(text_width, width)
        self.v_proj = nn.Linear(text_width, width)
        self.out_proj = nn.Linear(width, width)
        self.pool_query = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.pool_proj = nn.Linear(width, width)
        self.pool_norm = nn.LayerNorm(width)

    def load_point_e_clip_embed(self, model: CLIPGridPointDiffusionTransformer) -> None:
        """Copy base40M's ``clip_embed`` (LayerNorm + Linear of the grid) into ``image_embed``, so the image tokens
        start in the embedding the pretrained backbone was trained on."""
        if model.grid_width != self.grid_width or model.width != self.width:
            raise ValueError(f"CrossAttentionFusion(grid_width={self.grid_width}, width={self.width}) cannot take the "
                             f"clip_embed of a model with grid_width={model.grid_width}, width={model.width}")
        self.image_embed.load_state_dict(model.clip_embed.state_dict())

    def attend(self, x: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Image tokens x [B,T,width] attend to text_tokens [B,L,text_width] where text_mask [B,L] is True
        -> F [B,T,width] (residual included)."""
        b, t, _ = x.shape
        c = self.width // self.heads
        txt = self.text_norm(text_tokens)
        q = self.q_proj(self.query_norm(x)).view(b, t, self.heads, c).transpose(1, 2)          # [B,H,T,c]
        k = self.k_proj(txt).view(b, -1, self.heads, c).transpose(1, 2)                        # [B,H,L,c]
        v = self.v_proj(txt).view(b, -1, self.heads, c).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask[:, None, None, :])
        return x + self.out_proj(out.transpose(1, 2).reshape(b, t, self.width))

    def pool(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention pooling: feats F [B,T,width] -> (c [B,width], alpha [B,T]) with
        alpha_n = softmax_n(q · F_n / sqrt(width)), c = sum_n alpha_n F_n."""
        alpha = torch.softmax(feats @ self.pool_query / math.sqrt(self.width), dim=1)
        return torch.einsum("bt,btc->bc", alpha, feats), alpha

    def forward(self, grid: torch.Tensor, text_tokens: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        _check_grid(name, grid, self.grid_width)
        b = grid.shape[0]
        if text_tokens.ndim != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != self.text_width:
            raise ValueError(f"{name}: text_tokens must be the CLIP text token states [B, L, {self.text_width}] with "
                             f"B = {b}, got {tuple(text_tokens.shape)}")
        if text_mask is None:
            text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
        if text_mask.dtype != torch.bool or tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
            raise ValueError(f"{name}: text_mask must be bool [B, L] = {list(text_tokens.shape[:2])} (True = real "
                             f"token), got {tuple(text_mask.shape)} {text_mask.dtype}")
        if not bool(text_mask.any(dim=1).all()):
            raise ValueError(f"{name}: every text needs at least one unmasked token; rows "
                             f"{(~text_mask.any(dim=1)).nonzero().flatten().tolist()} are fully masked")
        grid, text_tokens = drop_pair(grid, text_tokens, self.cond_drop_prob, self.training)
        feats = self.attend(self.image_embed(grid), text_tokens.to(grid.dtype), text_mask)
        pooled, _ = self.pool(feats)
        return feats + self.pool_norm(self.pool_proj(pooled))[:, None]


def forward_with_condition(model: CLIPGridPointDiffusionTransformer, x: torch.Tensor, t: torch.Tensor,
                           cond: torch.Tensor, *, low_res: torch.Tensor | None = None) -> torch.Tensor:
    """Run a grid-conditioned Point-E model with fused tokens cond [B, grid_tokens, width] in place of its
    embedded CLIP grid, in the model's own token layout: base ``[time, cond, points]``, upsampler
    ``[time, cond, low-res, points]`` (``low_res`` [B,6,M] in data units, upsampler only).
    x [B,6,N] scaled points, t [B] steps -> [B,12,N]."""
    if not isinstance(model, CLIPGridPointDiffusionTransformer):
        raise TypeError(f"forward_with_condition needs a grid-conditioned Point-E model (base40M, upsample), got "
                        f"{type(model).__name__}")
    model.check_inputs(x, t)
    b = x.shape[0]
    if tuple(cond.shape) != (b, model.grid_tokens, model.width):
        raise ValueError(f"forward_with_condition: cond must be [B, grid_tokens, width] = "
                         f"[{b}, {model.grid_tokens}, {model.width}], got {tuple(cond.shape)}")
    prefix = [model.time_token(t), cond]
    if isinstance(model, CLIPGridUpsamplePointDiffusionTransformer):
        if low_res is None or low_res.ndim != 3 or low_res.shape[:2] != (b, model.cond_input_channels):
            raise ValueError(f"forward_with_condition: the upsampler needs low_res [B, {model.cond_input_channels}, M]"
                             f" with B = {b}, got {None if low_res is None else tuple(low_res.shape)}")
        prefix.append(model.embed_low_res(low_res))
    elif low_res is not None:
        raise ValueError(f"forward_with_condition: low_res is for the upsampler, not {type(model).__name__}")
    return model.forward_tokens(x, prefix)

"""SEPE's fusion of CLIP text and image features into a Point-E grid model's condition tokens (paper Sec. 3.1).

Both options map the CLIP ViT-L/14 image grid ``[B,256,1024]`` and text features to ``[B,256,width]``, the tensor
that the model's own ``clip_embed(grid)`` produces, and both are built as

    fused tokens = clip_embed(grid) + text-driven update,   the update zero at initialisation,

with ``clip_embed`` (``image_embed`` here) copied from the Point-E model the fusion conditions
(``load_point_e_clip_embed``). At step 0 the fused model is therefore exactly the released model (base40M, or the
upsampler for a fused stage 2), and fine-tuning starts from its behaviour. The denoiser keeps the model's token
layout ``[time, 256 condition tokens, points]`` (upsampler ``[time, 256, low-res, new]``; ``forward_with_condition``).

Classifier-free guidance: ``drop_conditions`` zeroes a training sample's condition tensors together, with draws
from a given generator; at sampling the unconditional branch gets zero tensors, the same input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lang3d.models.lora import LoRALinear, load_base_weights
from lang3d.models.point_e.models import CLIPGridPointDiffusionTransformer, CLIPGridUpsamplePointDiffusionTransformer

# condition keys that classifier-free dropout leaves alone (a zeroed mask is read as all-True, see
# SEPEConditionedModel.condition)
UNDROPPED_KEYS = ("text_mask",)


def drop_conditions(cond: dict[str, torch.Tensor], p: float,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Classifier-free dropout: zero sample i of every condition tensor [B,...] of ``cond`` (grid, text, low_res;
    not ``text_mask``) with probability p, one draw per sample from ``generator``; returns a new dict."""
    if p == 0.0:
        return dict(cond)
    batch = next(iter(cond.values())).shape[0]
    device = next(iter(cond.values())).device
    keep = torch.rand(batch, generator=generator, device=device) >= p
    return {key: value if key in UNDROPPED_KEYS else value * keep.view(-1, *([1] * (value.ndim - 1))).to(value.dtype)
            for key, value in cond.items()}


def _check_grid(name: str, grid: torch.Tensor, grid_width: int) -> None:
    if grid.ndim != 3 or grid.shape[2] != grid_width or not grid.is_floating_point():
        raise ValueError(f"{name}: grid must be float [B, T, {grid_width}] (CLIP image grid), got "
                         f"{tuple(grid.shape)} {grid.dtype}")


class GridFusion(nn.Module):
    """What both fusions share: ``image_embed = Sequential(LayerNorm(grid_width), Linear(grid_width, width))``, the
    structure of a Point-E grid model's ``clip_embed``, into which ``load_point_e_clip_embed`` copies that model's
    weights. With ``lora_rank`` the Linear is a ``LoRALinear`` (rank, ``lora_alpha``) around the copied weights and
    the copied LayerNorm is frozen (the paper's LoRALinear layers in the fusion, applied to its one pretrained
    projection); ``lora_rank=None`` trains the copy in full."""

    def __init__(self, grid_width: int, text_width: int, width: int, lora_rank: int | None, lora_alpha: float | None):
        super().__init__()
        self.grid_width, self.text_width, self.width = grid_width, text_width, width
        self.image_embed = nn.Sequential(nn.LayerNorm(grid_width), nn.Linear(grid_width, width))
        if lora_rank is not None:
            self.image_embed[1] = LoRALinear(self.image_embed[1], rank=lora_rank, alpha=lora_alpha)
            self.image_embed[0].requires_grad_(False)

    def load_point_e_clip_embed(self, model: CLIPGridPointDiffusionTransformer) -> None:
        """Copy ``model.clip_embed`` (LayerNorm + Linear of the grid) into ``image_embed``; LoRA tensors keep their
        zero update."""
        if model.grid_width != self.grid_width or model.width != self.width:
            raise ValueError(f"{type(self).__name__}(grid_width={self.grid_width}, width={self.width}) cannot take "
                             f"the clip_embed of a model with grid_width={model.grid_width}, width={model.width}")
        load_base_weights(self.image_embed, model.clip_embed.state_dict(), f"{type(model).__name__}.clip_embed")


class ConcatFusion(GridFusion):
    """Option A: the text vector broadcast to every grid patch, concatenated with the patch, through an MLP.

    ``forward(grid [B,T,grid_width], text [B,text_width]) -> [B,T,width]``, ``text`` the unit-norm CLIP text vector:
    with ``g_n = LayerNorm(grid_n)`` (``image_embed``'s),

        out_n = Linear(g_n) + fc2(GELU(fc1([g_n, sqrt(text_width) · text])))

    the first term being ``clip_embed(grid)``; the text is scaled as base40M-textvec scales its vector, to the
    LayerNorm's unit scale. ``fc2`` is zero-initialised, so the fusion starts as ``clip_embed``.
    """

    def __init__(self, grid_width: int = 1024, text_width: int = 768, width: int = 512, hidden_width: int = 512,
                 lora_rank: int | None = 8, lora_alpha: float | None = None):
        super().__init__(grid_width, text_width, width, lora_rank, lora_alpha)
        self.fc1 = nn.Linear(grid_width + text_width, hidden_width)
        self.fc2 = nn.Linear(hidden_width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.act = nn.GELU()

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        _check_grid(type(self).__name__, grid, self.grid_width)
        if tuple(text.shape) != (grid.shape[0], self.text_width):
            raise ValueError(f"{type(self).__name__}: text must be the CLIP text vector [B, {self.text_width}] with "
                             f"B = {grid.shape[0]}, got {tuple(text.shape)}")
        norm, proj = self.image_embed
        patches = norm(grid)
        text = math.sqrt(self.text_width) * text.to(grid.dtype)
        x = torch.cat([patches, text[:, None].expand(-1, grid.shape[1], -1)], dim=-1)
        return proj(patches) + self.fc2(self.act(self.fc1(x)))


class CrossAttentionFusion(GridFusion):
    """Option B: image-to-text cross-attention, attention pooling, Linear + LayerNorm, as 256 condition tokens.

    ``forward(grid [B,T,grid_width], text_tokens [B,L,text_width], text_mask [B,L] bool | None) -> [B,T,width]``.

    1. Image tokens ``x_n = image_embed(grid_n)`` (= ``clip_embed(grid)``).
    2. ``attend``: multi-head cross-attention, queries from the image tokens, keys/values from the CLIP text
       token states, padding (``text_mask`` False) masked out, then ``F_n = x_n + out_proj(attn_n)``. Attending over
       the token *sequence* keeps the softmax non-trivial (over a single text vector it is identically 1 and the
       query/key projections get no gradient). The residual keeps each patch's image content in F_n.
    3. ``pool``: ``alpha_n = softmax_n(q · F_n / sqrt(width))`` with a learnable q, ``c = sum_n alpha_n F_n``
       (paper, Sec. 3.1), then ``f = LayerNorm(Linear(c))``.
    4. Output tokens ``F_n + f``: one token per patch (base40M's layout, the spatial information the paper keeps),
       with the pooled fused vector f added to each as global, relevance-weighted context.

    ``out_proj`` and the affine weight and bias of ``f``'s LayerNorm are zero-initialised: the fusion starts as
    ``clip_embed`` and both text-driven terms grow from zero (their gradients are non-zero from the first step).
    """

    def __init__(self, grid_width: int = 1024, text_width: int = 768, width: int = 512, heads: int = 8,
                 lora_rank: int | None = 8, lora_alpha: float | None = None):
        super().__init__(grid_width, text_width, width, lora_rank, lora_alpha)
        if width % heads:
            raise ValueError(f"CrossAttentionFusion: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.query_norm = nn.LayerNorm(width)
        self.text_norm = nn.LayerNorm(text_width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(text_width, width)
        self.v_proj = nn.Linear(text_width, width)
        self.out_proj = nn.Linear(width, width)
        self.pool_query = nn.Parameter(torch.randn(width) / math.sqrt(width))
        self.pool_proj = nn.Linear(width, width)
        self.pool_norm = nn.LayerNorm(width)
        for tensor in (self.out_proj.weight, self.out_proj.bias, self.pool_norm.weight, self.pool_norm.bias):
            nn.init.zeros_(tensor)

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

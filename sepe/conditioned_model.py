"""A Point-E grid model (base40M or the upsampler) driven by SEPE's fused text + image condition.

``SEPEConditionedModel(model, fusion)`` is a denoiser with Point-E's model signature, so it is the ``model`` of
``GaussianDiffusion.training_losses`` and of ``PointCloudSampler``::

    forward(x [B,6,N] scaled, t [B] int64, *, grid [B,T,grid_width],
            text_vector [B,D]                       (ConcatFusion)
            | text_tokens [B,L,D] + text_mask [B,L] (CrossAttentionFusion),
            low_res [B,6,M] data units              (upsampler only)) -> [B,12,N]

The fused tokens [B,T,width] take the place of ``clip_embed(grid)`` in the model's own token layout
(``[time, T condition tokens, points]``, upsampler ``[time, T, low-res, points]``;
``sepe.fusion.forward_with_condition``), so the model's pretrained weights keep their meaning; each fusion starts as the
model's own ``clip_embed`` (see ``sepe.fusion``), so at initialisation the wrapper equals the wrapped Point-E model. A
fused upsampler (SEPE's ``upsampler_conditioning: fused``) gets its own wrapper and fusion, warm-started from the
upsampler's ``clip_embed``.
"""
from __future__ import annotations

import torch
from torch import nn

from lang3d.models.point_e.models import CLIPGridPointDiffusionTransformer
from sepe.fusion import ConcatFusion, CrossAttentionFusion, forward_with_condition


class SEPEConditionedModel(nn.Module):
    """``model`` (a grid-conditioned Point-E transformer) + ``fusion`` (``ConcatFusion`` | ``CrossAttentionFusion``)."""

    def __init__(self, model: CLIPGridPointDiffusionTransformer, fusion: ConcatFusion | CrossAttentionFusion):
        super().__init__()
        if not isinstance(model, CLIPGridPointDiffusionTransformer):
            raise TypeError(f"SEPEConditionedModel needs a grid-conditioned Point-E model, got {type(model).__name__}")
        if not isinstance(fusion, (ConcatFusion, CrossAttentionFusion)):
            raise TypeError(f"SEPEConditionedModel needs ConcatFusion or CrossAttentionFusion, got "
                            f"{type(fusion).__name__}")
        if fusion.width != model.width or fusion.grid_width != model.grid_width:
            raise ValueError(f"fusion (grid_width {fusion.grid_width} -> {fusion.width}) does not fit the model "
                             f"(grid_width {model.grid_width}, width {model.width})")
        self.model = model
        self.fusion = fusion

    @property
    def uses_tokens(self) -> bool:
        """Whether the condition is the text token sequence (cross-attention) rather than the text vector."""
        return isinstance(self.fusion, CrossAttentionFusion)

    def condition(self, grid: torch.Tensor, text_vector: torch.Tensor | None = None,
                  text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fused condition tokens [B, T, width] from the CLIP grid and the text input the fusion needs.

        Classifier-free sampling zeroes every condition tensor, the mask included; a row whose mask is all False
        is therefore read as all True. That is exact: zero text tokens give identical keys and values, so the
        attention output does not depend on which of them are masked."""
        if self.uses_tokens:
            if text_tokens is None or text_vector is not None:
                raise ValueError("cross-attention fusion takes text_tokens (+ text_mask), not text_vector")
            if text_mask is not None and text_mask.dtype == torch.bool and text_mask.ndim == 2:
                text_mask = text_mask | ~text_mask.any(dim=1, keepdim=True)
            return self.fusion(grid, text_tokens, text_mask)
        if text_vector is None or text_tokens is not None or text_mask is not None:
            raise ValueError("concat fusion takes text_vector, not text_tokens / text_mask")
        return self.fusion(grid, text_vector)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, grid: torch.Tensor, text_vector: torch.Tensor | None = None,
                text_tokens: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                low_res: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.condition(grid, text_vector, text_tokens, text_mask)
        return forward_with_condition(self.model, x, t, cond, low_res=low_res)

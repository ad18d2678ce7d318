"""Frozen CLIP ViT conditioning for Point-E: L2-normalised text / image vectors and the image token grid.

The grid follows Point-E's ``embed_images_grid``: ``conv1`` -> flatten -> class token -> + positional
embedding -> ``ln_pre`` -> the whole visual transformer -> drop the class token. No ``ln_post``, no projection.
For OpenAI ViT-L/14 at 224 px: grid [B,256,1024], vectors [B,768].
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from PIL import Image
from torch import nn

from lang3d.models.clip import CLIPImagePreprocess, load_clip, project_text, text_token_states
from lang3d.training.checkpoint import FrozenPretrained

ImageInput = torch.Tensor | Sequence[Image.Image | np.ndarray]


class CLIPConditioner(FrozenPretrained):
    """Frozen open_clip ViT (class-token model) producing Point-E's condition tensors, from both towers (``model``).
    Always in eval mode, never in a checkpoint (``FrozenPretrained``).

    Images: a float tensor [B,3,H,W] in [0,1], or a sequence of PIL images / uint8 [H,W,3] arrays. They are
    preprocessed as CLIP's eval transform (bicubic resize of the shorter side to the model's size, e.g. 224,
    centre crop, mean/std normalisation).
    """

    def __init__(self, model: nn.Module, tokenizer):
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok":
            raise TypeError(f"CLIPConditioner needs an open_clip ViT with a class token (pool_type 'tok', no "
                            f"attentional pool), got visual tower {type(visual).__name__}")
        super().__init__(model=model)
        self.tokenizer = tokenizer
        self.preprocess_images = CLIPImagePreprocess(visual.preprocess_cfg)

    @classmethod
    def load(cls, model_name: str = "ViT-L-14", pretrained: str | None = "openai",
             cache_dir: str | None = None) -> "CLIPConditioner":
        """Load via ``lang3d.models.clip.load_clip`` (tag, local file or None = random init; nothing is downloaded
        offline). The default is Point-E's CLIP, OpenAI ViT-L/14."""
        return cls(*load_clip(model_name, pretrained, cache_dir=cache_dir))

    @property
    def grid_tokens(self) -> int:
        """Number of grid tokens (patches), e.g. 256."""
        h, w = self.model.visual.grid_size
        return h * w

    @property
    def grid_width(self) -> int:
        """Width of the grid tokens (the visual transformer width), e.g. 1024."""
        return self.model.visual.conv1.out_channels

    @property
    def vector_width(self) -> int:
        """Width of the text / image vectors (CLIP joint embedding), e.g. 768."""
        return self.model.visual.output_dim

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """Images -> normalised pixels [B,3,S,S] float32 on the model's device (S = CLIP's input size)."""
        return self.preprocess_images(images).to(self.device)

    @torch.no_grad()
    def grid_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B,3,S,S] -> grid [B, grid_tokens, grid_width] float32 (class token dropped)."""
        v = self.model.visual
        x = v.conv1(pixels.to(v.conv1.weight.dtype)).flatten(2).transpose(1, 2)       # [B, T, W]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype))
        return v.transformer(x)[:, 1:].float()

    def embed_images_grid(self, images: ImageInput) -> torch.Tensor:
        """Images -> CLIP grid [B, grid_tokens, grid_width] (Point-E's grid condition)."""
        return self.grid_from_pixels(self.preprocess(images))

    @torch.no_grad()
    def embed_images(self, images: ImageInput) -> torch.Tensor:
        """Images -> L2-normalised CLIP image vectors [B, vector_width] float32."""
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> L2-normalised CLIP text vectors [B, vector_width] float32 (tokens truncated to the context)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of strings")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def embed_text_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (token states [B, L, vector_width] float32 after ln_final and the text projection, mask
        [B, L] bool, True up to and including the end-of-text token). The state at the end-of-text token,
        L2-normalised, is ``embed_text``."""
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of strings")
        tokens = self.tokenizer(list(texts)).to(self.device)
        x = project_text(self.model, text_token_states(self.model, self.model.token_embedding(tokens)))
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] <= tokens.argmax(-1)[:, None]
        return x.float(), mask

"""Frozen CLIP image tower (any open_clip model: ViT or ResNet) giving one global embedding per image."""
from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from lang3d.clip import freeze


class CLIPImageEncoder(nn.Module):
    """images uint8 [B,H,W,3] -> [B,d] embeddings as open_clip ``encode_image`` (not L2-normalised).

    Preprocessing follows open_clip's eval transform: resize the shorter side to the tower's input size
    (bicubic, antialiased, on tensors), centre crop, normalise with the model's mean / std. Always in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not hasattr(model, "encode_image") or not hasattr(model, "visual"):
            raise TypeError(f"CLIPImageEncoder needs an open_clip CLIP model, got {type(model).__name__}")
        self.model = freeze(model)
        size = model.visual.image_size
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        cfg = getattr(model.visual, "preprocess_cfg", {})
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))

    def train(self, mode: bool = True) -> "CLIPImageEncoder":
        """Ignores ``mode``: the encoder stays in eval mode."""
        return super().train(False)

    @property
    def preprocessing(self) -> str:
        """Description of the preprocessing (part of the embedding-cache namespace)."""
        return f"size={self.image_size} mean={self.mean} std={self.std} resize=shortest-bicubic-aa+centre-crop"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> normalised float [B,3,h,w] at the tower's input size."""
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B,H,W,3], got {tuple(images.shape)} {images.dtype}")
        x = images.permute(0, 3, 1, 2).float() / 255.0
        h, w = self.image_size
        scale = max(h / x.shape[2], w / x.shape[3])
        size = (max(h, round(x.shape[2] * scale)), max(w, round(x.shape[3] * scale)))
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        top, left = (size[0] - h) // 2, (size[1] - w) // 2
        x = x[:, :, top:top + h, left:left + w]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weight = next(self.model.visual.parameters())
        return self.model.encode_image(self.preprocess(images.to(weight.device)).to(weight.dtype))

"""Frozen CLIP image tower (any open_clip model: ViT or ResNet) giving one global embedding per image."""
from __future__ import annotations

import torch
from torch import nn

from lang3d.models.clip import CLIPImagePreprocess
from lang3d.training.checkpoint import FrozenPretrained


class CLIPImageEncoder(FrozenPretrained):
    """images uint8 [B,H,W,3] -> [B,d] embeddings as open_clip ``encode_image`` (not L2-normalised), after the
    tower's own evaluation transform (``lang3d.models.clip.CLIPImagePreprocess``). Holds the visual tower only
    (``visual``); always in eval mode, never in a checkpoint (``FrozenPretrained``)."""

    def __init__(self, model: nn.Module):
        if not hasattr(model, "encode_image") or not hasattr(model, "visual"):
            raise TypeError(f"CLIPImageEncoder needs an open_clip CLIP model, got {type(model).__name__}")
        super().__init__(visual=model.visual)
        self.preprocess_images = CLIPImagePreprocess(model.visual.preprocess_cfg)
        self.image_size = self.preprocess_images.image_size
        self.mean, self.std = self.preprocess_images.mean, self.preprocess_images.std

    @property
    def tower(self) -> nn.Module:
        """The module holding the weights the embeddings come from (``visual``)."""
        return self.visual

    @property
    def preprocessing(self) -> str:
        """Description of the preprocessing (part of the embedding-cache namespace)."""
        return self.preprocess_images.description

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> normalised float [B,3,h,w] at the tower's input size."""
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B,H,W,3], got {tuple(images.shape)} {images.dtype}")
        return self.preprocess_images(images)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weight = next(self.visual.parameters())
        return self.visual(self.preprocess(images.to(weight.device)).to(weight.dtype))  # = CLIP.encode_image

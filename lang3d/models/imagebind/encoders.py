"""Frozen ImageBind towers behind the interfaces of the CLIP encoders: texts, uint8 images or audio clips ->
embeddings [B,D] exactly as ImageBind returns them (vision L2-normalised; text and audio normalised and scaled).

Each holds its tower as ``tower``; always in eval mode, never in a state dict or checkpoint (``FrozenPretrained``).
"""
from __future__ import annotations

import open_clip
import torch

from lang3d.models.clip import CLIPImagePreprocess
from lang3d.models.imagebind.preprocessors import CONTEXT_LENGTH, IMAGE_SIZE
from lang3d.models.imagebind.tower import ImageBindTower
from lang3d.training.checkpoint import FrozenPretrained

# ImageBind's load_and_transform_vision_data: Resize(224, bicubic) of the shorter side, CenterCrop(224), CLIP's
# mean / std; the same transform as open_clip's evaluation transform with these settings.
IMAGE_PREPROCESS = {"size": IMAGE_SIZE, "mode": "RGB", "mean": open_clip.OPENAI_DATASET_MEAN,
                    "std": open_clip.OPENAI_DATASET_STD, "interpolation": "bicubic", "resize_mode": "shortest"}


def _check(tower: ImageBindTower, modality: str) -> ImageBindTower:
    if not isinstance(tower, ImageBindTower) or tower.modality != modality:
        raise TypeError(f"needs ImageBind's {modality} tower, got {getattr(tower, 'modality', type(tower).__name__)}")
    return tower


class ImageBindTextEncoder(FrozenPretrained):
    """texts (K strings) -> [K,D]. Tokens: CLIP's byte-pair tokenizer (open_clip's ``SimpleTokenizer``, the
    vocabulary and cleaning ImageBind's own tokenizer uses), 77 tokens, end-of-text kept last when cut."""

    def __init__(self, tower: ImageBindTower):
        super().__init__(tower=_check(tower, "text"))
        self.tokenizer = open_clip.SimpleTokenizer(context_length=CONTEXT_LENGTH)
        self.embed_dim = tower.embed_dim

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """texts -> token ids [K,77] int64 on the tower's device."""
        return self.tokenizer(list(texts)).to(self.tower.preprocessor.pos_embed.device)

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.tower(self.tokenize(texts))


class ImageBindImageEncoder(FrozenPretrained):
    """images -> [B,D] after ImageBind's image transform (``IMAGE_PREPROCESS``). A uint8 batch [B,H,W,3] is
    transformed image by image as PIL images, as ImageBind reads files."""

    def __init__(self, tower: ImageBindTower):
        super().__init__(tower=_check(tower, "vision"))
        self.preprocess_images = CLIPImagePreprocess(IMAGE_PREPROCESS)
        self.embed_dim = tower.embed_dim

    @property
    def preprocessing(self) -> str:
        """Description of the preprocessing (part of the embedding-cache namespace)."""
        return self.preprocess_images.description

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] -> normalised float [B,3,224,224]."""
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [B,H,W,3], got {tuple(images.shape)} {images.dtype}")
        return self.preprocess_images(list(images.cpu().numpy()))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weight = self.tower.preprocessor.pos_embed
        return self.tower(self.preprocess(images).to(weight.device, weight.dtype))


class ImageBindAudioEncoder(FrozenPretrained):
    """audio clips [B,S,1,128,204] (``lang3d.data.audio.imagebind_audio_clips`` of each sound) -> [B,D], the mean
    of the clips' embeddings."""

    def __init__(self, tower: ImageBindTower):
        super().__init__(tower=_check(tower, "audio"))
        self.embed_dim = tower.embed_dim

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        weight = self.tower.preprocessor.pos_embed
        return self.tower(clips.to(weight.device, weight.dtype))

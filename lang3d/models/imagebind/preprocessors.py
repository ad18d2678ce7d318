"""ImageBind's pre-processors: a modality's input -> the trunk's tokens [B,L,width] (learned positions added).

Input sizes are ImageBind's, fixed by its learned positional embeddings: images 224x224, text 77 tokens of a
49,408-word vocabulary, audio spectrograms of 128 mel bins x 204 frames.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 224
IMAGE_FRAMES = 2                      # an image is a clip of two identical frames
IMAGE_PATCH = (2, 14, 14)             # Conv3d kernel and stride: (frames, height, width)
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
MEL_BINS = 128
AUDIO_FRAMES = 204
AUDIO_PATCH, AUDIO_STRIDE = 16, 10    # Conv2d kernel and stride over [mel bins, frames]
AUDIO_PATCH_NORM_EPS = 1e-5           # the audio stem's LayerNorm keeps torch's default


def _grid(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class ImageTokens(nn.Module):
    """images [B,3,224,224] (normalised pixels) -> tokens [B,1+256,width]: each image repeated as two frames,
    Conv3d patches of 2x14x14 (no bias), a class token first, learned positions [1,257,width] added."""

    def __init__(self, width: int):
        super().__init__()
        self.patch_embed = nn.Conv3d(3, width, IMAGE_PATCH, stride=IMAGE_PATCH, bias=False)
        patches = _grid(IMAGE_FRAMES, IMAGE_PATCH[0], IMAGE_PATCH[0]) * _grid(IMAGE_SIZE, IMAGE_PATCH[1],
                                                                              IMAGE_PATCH[1]) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, width))
        nn.init.normal_(self.cls_token, std=width ** -0.5)
        nn.init.normal_(self.pos_embed, std=width ** -0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"ImageBind's vision tower takes images [B,3,{IMAGE_SIZE},{IMAGE_SIZE}], "
                             f"got {tuple(images.shape)}")
        clip = images.unsqueeze(2).repeat(1, 1, IMAGE_FRAMES, 1, 1)                    # [B,3,2,H,W]
        patches = self.patch_embed(clip).flatten(2).transpose(1, 2)                    # [B,256,width]
        cls = self.cls_token.expand(len(patches), -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed


class TextTokens(nn.Module):
    """token ids [B,77] -> token embeddings plus learned positions [B,77,width]."""

    def __init__(self, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, CONTEXT_LENGTH, width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != CONTEXT_LENGTH or tokens.is_floating_point():
            raise ValueError(f"ImageBind's text tower takes token ids [B,{CONTEXT_LENGTH}], got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        return self.token_embedding(tokens) + self.pos_embed


class SpectrogramTokens(nn.Module):
    """spectrograms [B,1,128,204] -> tokens [B,1+228,width]: Conv2d patches of 16x16 at stride 10 (no bias), a
    LayerNorm (eps 1e-5) per patch, a class token first, learned positions [1,229,width] added."""

    def __init__(self, width: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, width, AUDIO_PATCH, stride=AUDIO_STRIDE, bias=False)
        self.patch_norm = nn.LayerNorm(width, eps=AUDIO_PATCH_NORM_EPS)
        patches = _grid(MEL_BINS, AUDIO_PATCH, AUDIO_STRIDE) * _grid(AUDIO_FRAMES, AUDIO_PATCH, AUDIO_STRIDE)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, width))
        nn.init.normal_(self.cls_token, std=width ** -0.5)
        nn.init.normal_(self.pos_embed, std=width ** -0.5)

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        if spectrograms.ndim != 4 or tuple(spectrograms.shape[1:]) != (1, MEL_BINS, AUDIO_FRAMES):
            raise ValueError(f"ImageBind's audio tower takes spectrograms [B,1,{MEL_BINS},{AUDIO_FRAMES}], got "
                             f"{tuple(spectrograms.shape)}")
        patches = self.patch_norm(self.patch_embed(spectrograms).flatten(2).transpose(1, 2))   # [B,228,width]
        cls = self.cls_token.expand(len(patches), -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

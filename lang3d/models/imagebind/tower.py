"""One ImageBind modality as a tower: pre-processor -> trunk -> head -> post-processor, input -> [B,embed_dim].

Per modality (ImageBind's ``imagebind_model.py``):

| modality | pre-processor | trunk | head (LayerNorm eps 1e-6, Linear no bias) | post-processor |
|---|---|---|---|---|
| vision | ``ImageTokens`` (Conv3d over two frames) | LayerNorm first | class token | L2-normalise |
| text | ``TextTokens`` | causal mask | end-of-text token (largest id) | L2-normalise, x learned scale |
| audio | ``SpectrogramTokens`` | key / value bias tokens | class token | L2-normalise, x 20 (fixed) |

Scales are ``min(exp(log_scale), 100)``. Audio takes several clips per sound ([B,S,1,128,204]); a sound's embedding
is the mean of its clips' (scaled) embeddings, not re-normalised, as ImageBind's ``forward`` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lang3d.models.imagebind.preprocessors import ImageTokens, SpectrogramTokens, TextTokens
from lang3d.models.imagebind.transformer import NORM_EPS, Trunk, causal_mask

MODALITIES = ("vision", "text", "audio")
MAX_SCALE = 100.0
TEXT_SCALE_INIT = 1 / 0.07
AUDIO_SCALE = 20.0


class Head(nn.Module):
    """The token a modality pools on, [B,L,width] and its index [B] -> LayerNorm -> Linear -> [B,embed_dim]."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=NORM_EPS)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens[torch.arange(len(tokens), device=tokens.device), index]))


class Postprocessor(nn.Module):
    """L2 normalisation, then (text, audio) a scale ``min(exp(log_scale), 100)``: a parameter (text, learned by
    ImageBind) or a buffer (audio, fixed at ln 20); both are read from the weights file."""

    def __init__(self, log_scale: float | None = None, learned: bool = False):
        super().__init__()
        if log_scale is None:
            self.log_scale = None
        elif learned:
            self.log_scale = nn.Parameter(torch.tensor(log_scale))
        else:
            self.register_buffer("log_scale", torch.tensor(log_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return x if self.log_scale is None else self.log_scale.exp().clamp(max=MAX_SCALE) * x


class ImageBindTower(nn.Module):
    """One modality of ImageBind (``modality``: vision, text or audio) at the sizes of ``architecture`` (a dict
    like ``lang3d/models/imagebind/configs/*.json``: ``embed_dim`` and per modality ``width``, ``layers``,
    ``heads``).

    ``forward``: vision: images [B,3,224,224] (normalised); text: token ids [B,77]; audio: spectrograms
    [B,S,1,128,204] (S clips per sound) or [B,1,128,204] -> embeddings [B,embed_dim] as ImageBind returns them."""

    def __init__(self, modality: str, architecture: dict):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown ImageBind modality '{modality}' (known: {', '.join(MODALITIES)})")
        sizes = architecture[modality]
        width = sizes["width"]
        self.modality, self.embed_dim = modality, architecture["embed_dim"]
        self.preprocessor = {"vision": ImageTokens, "text": TextTokens, "audio": SpectrogramTokens}[modality](width)
        self.trunk = Trunk(width, sizes["layers"], sizes["heads"], pre_norm=modality == "vision",
                           bias_kv=modality == "audio")
        self.head = Head(width, self.embed_dim)
        log_scale = {"vision": None, "text": math.log(TEXT_SCALE_INIT), "audio": math.log(AUDIO_SCALE)}[modality]
        self.postprocessor = Postprocessor(log_scale, learned=modality == "text")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clips = None
        if self.modality == "audio" and x.ndim == 5:
            clips = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
        tokens = self.preprocessor(x)
        if self.modality == "text":
            tokens = self.trunk(tokens, causal_mask(tokens.shape[1], tokens.device).to(tokens.dtype))
            index = x.argmax(dim=-1)                                       # end-of-text: the largest token id
        else:
            tokens = self.trunk(tokens)
            index = torch.zeros(len(tokens), dtype=torch.long, device=tokens.device)   # the class token
        out = self.postprocessor(self.head(tokens, index))
        return out if clips is None else out.reshape(-1, clips, out.shape[-1]).mean(dim=1)

"""Point-E's conditional point-cloud denoisers, their config table and the official-checkpoint loader.

All models map ``x [B,6,N]`` (scaled xyz+RGB, see ``POINT_E_CHANNEL_SCALES``) and steps ``t [B]`` to
``[B,12,N]`` (6 ε channels then 6 variance-interpolation values). Condition tensors come precomputed
(``lang3d.models.point_e.clip_condition.CLIPConditioner`` makes them); the models hold no CLIP weights, exactly as the
official checkpoints. Token orders (only the last N outputs are read):

- grid models (base40M/300M/1B): ``[time, grid tokens, points]``
- vector models (textvec/imagevec): ``[vector token, time, points]``
- upsampler: ``[time, grid tokens, low-res points, new points]``
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lang3d.models.point_e.transformer import PointDiffusionTransformer
from lang3d.training.checkpoint import CheckpointMismatchError, check_state_dict

# Official data scaling (xyz * 2, RGB * (1/127.5) - 1), stored as buffers of the upsampler; values verbatim.
POINT_E_CHANNEL_SCALES = (2.0, 2.0, 2.0, 0.007843137255, 0.007843137255, 0.007843137255)
POINT_E_CHANNEL_BIASES = (0.0, 0.0, 0.0, -1.0, -1.0, -1.0)


def drop_condition(cond: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Classifier-free dropout: in training, zero each sample's condition [B,...] with probability p."""
    if not training or p == 0.0:
        return cond
    keep = torch.rand(cond.shape[0], device=cond.device) >= p
    return cond * keep.view(-1, *([1] * (cond.ndim - 1))).to(cond.dtype)


def _check_drop_prob(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {p}")
    return float(p)


class CLIPGridPointDiffusionTransformer(PointDiffusionTransformer):
    """Denoiser conditioned on a CLIP image grid (base40M, base300M, base1B).

    ``forward(x [B,6,N], t [B], *, grid [B, grid_tokens, grid_width]) -> [B,12,N]``. The grid is embedded by
    ``clip_embed = Sequential(LayerNorm(grid_width), Linear(grid_width, width))`` in ``embed_grid``, the one
    step a fused condition (SEPE) replaces: ``forward_tokens(x, [time_token(t), tokens [B,T,width]])``.
    """

    def __init__(self, *, grid_tokens: int = 256, grid_width: int = 1024, cond_drop_prob: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.grid_tokens, self.grid_width = grid_tokens, grid_width
        self.cond_drop_prob = _check_drop_prob(cond_drop_prob)
        self.clip_embed = nn.Sequential(nn.LayerNorm(grid_width), nn.Linear(grid_width, self.width))

    def check_grid(self, grid: torch.Tensor, batch: int) -> None:
        """Raise ValueError unless grid is [batch, grid_tokens, grid_width]."""
        if tuple(grid.shape) != (batch, self.grid_tokens, self.grid_width):
            raise ValueError(f"{type(self).__name__}: grid must be [B, grid_tokens, grid_width] = "
                             f"[{batch}, {self.grid_tokens}, {self.grid_width}], got {tuple(grid.shape)}")

    def embed_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """CLIP grid [B,T,grid_width] -> condition tokens [B,T,width]; cond dropout (training) before the LN."""
        return self.clip_embed(drop_condition(grid, self.cond_drop_prob, self.training))

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, grid: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t)
        self.check_grid(grid, x.shape[0])
        return self.forward_tokens(x, [self.time_token(t), self.embed_grid(grid)])


class CLIPGridUpsamplePointDiffusionTransformer(CLIPGridPointDiffusionTransformer):
    """Upsampler: new points conditioned on the CLIP grid and a low-resolution cloud.

    ``forward(x [B,6,N], t [B], *, low_res [B,6,M], grid [B,T,grid_width] | None) -> [B,12,N]``
    (official: N = n_ctx = 3072, M = cond_ctx = 1024). ``low_res`` is in data units (xyz ~[-0.5,0.5], RGB 0..255),
    as the official sampler passes it: the model scales it with the ``channel_scales``/``channel_biases``
    buffers before ``cond_point_proj``. ``grid=None`` means unconditional (a zero grid).
    """

    def __init__(self, *, cond_input_channels: int | None = None, cond_ctx: int = 1024,
                 channel_scales: Sequence[float] = POINT_E_CHANNEL_SCALES,
                 channel_biases: Sequence[float] = POINT_E_CHANNEL_BIASES, **kwargs):
        kwargs.setdefault("n_ctx", 4096 - 1024)
        super().__init__(**kwargs)
        self.cond_input_channels = cond_input_channels or self.input_channels
        self.cond_ctx = cond_ctx
        if len(channel_scales) != self.cond_input_channels or len(channel_biases) != self.cond_input_channels:
            raise ValueError(f"channel_scales/channel_biases need {self.cond_input_channels} values, got "
                             f"{len(channel_scales)}/{len(channel_biases)}")
        self.cond_point_proj = nn.Linear(self.cond_input_channels, self.width)
        self.register_buffer("channel_scales", torch.tensor(channel_scales, dtype=torch.float32))
        self.register_buffer("channel_biases", torch.tensor(channel_biases, dtype=torch.float32))

    def embed_low_res(self, low_res: torch.Tensor) -> torch.Tensor:
        """Low-res cloud [B,C,M] in data units -> tokens [B,M,width] (channel scaling, then cond_point_proj)."""
        scaled = low_res * self.channel_scales[None, :, None] + self.channel_biases[None, :, None]
        return self.cond_point_proj(scaled.permute(0, 2, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, low_res: torch.Tensor,
                grid: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, t)
        b = x.shape[0]
        if low_res.ndim != 3 or low_res.shape[:2] != (b, self.cond_input_channels):
            raise ValueError(f"{type(self).__name__}: low_res must be [B, {self.cond_input_channels}, M] with "
                             f"B = {b}, got {tuple(low_res.shape)}")
        if grid is None:
            grid = x.new_zeros(b, self.grid_tokens, self.grid_width)
        self.check_grid(grid, b)
        return self.forward_tokens(x, [self.time_token(t), self.embed_grid(grid), self.embed_low_res(low_res)])


class CLIPVectorPointDiffusionTransformer(PointDiffusionTransformer):
    """Denoiser conditioned on one CLIP vector (base40M-textvec / base40M-imagevec).

    ``forward(x [B,6,N], t [B], *, vector [B, vector_width]) -> [B,12,N]``. ``vector`` is the L2-normalised
    CLIP embedding (a zero vector = unconditional); it is multiplied by sqrt(vector_width) before
    ``clip_embed = Linear(vector_width, width)`` and placed before the time token.
    """

    def __init__(self, *, vector_width: int = 768, cond_drop_prob: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vector_width = vector_width
        self.cond_drop_prob = _check_drop_prob(cond_drop_prob)
        self.clip_embed = nn.Linear(vector_width, self.width)

    def embed_vector(self, vector: torch.Tensor) -> torch.Tensor:
        """Unit CLIP vector [B,D] -> one condition token [B,1,width] (cond dropout in training, then × sqrt(D))."""
        vector = drop_condition(vector, self.cond_drop_prob, self.training)
        return self.clip_embed(math.sqrt(self.vector_width) * vector)[:, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, vector: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t)
        if tuple(vector.shape) != (x.shape[0], self.vector_width):
            raise ValueError(f"{type(self).__name__}: vector must be [B, {self.vector_width}] with B = "
                             f"{x.shape[0]}, got {tuple(vector.shape)}")
        return self.forward_tokens(x, [self.embed_vector(vector), self.time_token(t)])


_BASE = dict(input_channels=6, output_channels=12, n_ctx=1024, width=512, layers=12, heads=8, init_scale=0.25)

# name -> constructor ("cls"), what the model is conditioned on ("conditioning"), and constructor arguments.
MODEL_CONFIGS: dict[str, dict] = {
    "base40M": dict(cls=CLIPGridPointDiffusionTransformer, conditioning="image_grid", **_BASE, cond_drop_prob=0.1),
    "base40M-textvec": dict(cls=CLIPVectorPointDiffusionTransformer, conditioning="text_vector", **_BASE,
                            cond_drop_prob=0.1),
    "base40M-imagevec": dict(cls=CLIPVectorPointDiffusionTransformer, conditioning="image_vector", **_BASE,
                             cond_drop_prob=0.1),
    "base40M-uncond": dict(cls=PointDiffusionTransformer, conditioning="none", **_BASE),
    "base300M": dict(cls=CLIPGridPointDiffusionTransformer, conditioning="image_grid",
                     **{**_BASE, "width": 1024, "layers": 24, "heads": 16}, cond_drop_prob=0.1),
    "base1B": dict(cls=CLIPGridPointDiffusionTransformer, conditioning="image_grid",
                   **{**_BASE, "width": 2048, "layers": 24, "heads": 32}, cond_drop_prob=0.1),
    "upsample": dict(cls=CLIPGridUpsamplePointDiffusionTransformer, conditioning="image_grid+low_res",
                     **{**_BASE, "n_ctx": 3072}, cond_ctx=1024, channel_scales=POINT_E_CHANNEL_SCALES,
                     channel_biases=POINT_E_CHANNEL_BIASES, cond_drop_prob=0.1),
}


def build_model(name: str, **overrides) -> PointDiffusionTransformer:
    """Model ``name`` of ``MODEL_CONFIGS`` with constructor arguments replaced by ``overrides``
    (e.g. ``width=32, layers=1, grid_tokens=16, grid_width=32`` for tests). Sets ``model.conditioning``.
    Allocates on torch's default device: build under ``torch.device("meta")`` to count parameters only."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown Point-E model '{name}'; known: {', '.join(MODEL_CONFIGS)}")
    kwargs = dict(MODEL_CONFIGS[name])
    cls, conditioning = kwargs.pop("cls"), kwargs.pop("conditioning")
    model = cls(**{**kwargs, **overrides})
    model.conditioning = conditioning
    return model


def load_official_checkpoint(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an official Point-E checkpoint (a plain ``dict[str, Tensor]`` file such as ``base_40m.pt``, or
    the dict itself) into ``model`` with ``strict=True``. Any mismatch raises CheckpointMismatchError naming
    the tensor and both shapes; an unreadable or non-dict file raises it naming the file. Returns ``model``."""
    if isinstance(source, Mapping):
        state, where = source, "state dict"
    else:
        where = f"checkpoint file {source}"
        if not Path(source).is_file():
            raise CheckpointMismatchError(f"{where} does not exist")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # any unpickling / zip error
            raise CheckpointMismatchError(f"{where} is not a readable torch file: {e}") from e
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise CheckpointMismatchError(f"{where} is not a plain dict[str, Tensor] (the official Point-E format), "
                                      f"got {type(state).__name__}")
    check_state_dict(model, state, where)
    model.load_state_dict(state, strict=True)
    return model

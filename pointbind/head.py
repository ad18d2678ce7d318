"""Projection of 3D features into the frozen joint space, and the learnable contrastive temperature."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clamps the log scale to [0, ln 100]


class ProjectionHead(nn.Module):
    """features [B, in_dim] -> unit-norm embeddings [B, embed_dim]:
    Linear(in_dim -> hidden, no bias; Point-Bind's ``pc_projection`` matrix, normal std hidden^-1/2) -> LayerNorm
    (eps ``norm_eps``; 1e-6 as ImageBind's ``modality_head_point``) -> Dropout -> Linear(hidden -> embed_dim, no
    bias) -> L2 normalisation."""

    def __init__(self, in_dim: int, embed_dim: int, hidden_dim: int = 512, dropout: float = 0.5,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=hidden_dim ** -0.5)
        self.norm = nn.LayerNorm(hidden_dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, embed_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.out(self.dropout(self.norm(self.proj(features)))), dim=-1)


class LogitScale(nn.Module):
    """Learnable log temperature ``log_scale`` (init ln(1/0.07)); ``forward()`` gives exp(log_scale) with the
    log clamped to [0, ln 100]. ``clamp_()`` clamps the parameter itself, as CLIP does after every step."""

    def __init__(self, init: float = LOGIT_SCALE_INIT, max_log: float = LOGIT_SCALE_MAX):
        super().__init__()
        self.max_log = max_log
        self.log_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, self.max_log).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log)

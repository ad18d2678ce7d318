"""Text Querying Module (Text4Point Eq. 5-9): 3D features query the class text embeddings."""
from __future__ import annotations

import torch
from torch import nn


class TextQueryingModule(nn.Module):
    """Cross-attention with voxel features as queries and text embeddings as keys/values.

        ĥ_norm = BN(ĥ3D), t_norm = BN(t)                          (5)
        Q = ĥ_norm W^Q, K = t_norm W^K, V = t_norm W^V           (6)
        Attn = softmax(Q K^T / √d_head) V                         (7)
        h_attn = Attn W^O                                         (8)
        h_text = MLP(BN(h_attn))                                  (9)

    dim: the CLIP embedding width d; num_heads = 1 is Eq. (7) exactly (√d scaling).
    forward(h [N, d], t [K, d]) -> h_text [N, d].
    """

    def __init__(self, dim: int, num_heads: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_query = nn.BatchNorm1d(dim)
        self.norm_text = nn.BatchNorm1d(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_attention = nn.BatchNorm1d(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        q = self.norm_query(h).unsqueeze(0)
        kv = self.norm_text(t).unsqueeze(0)
        attended, _ = self.attention(q, kv, kv, need_weights=False)
        return self.mlp(self.norm_attention(attended.squeeze(0)))

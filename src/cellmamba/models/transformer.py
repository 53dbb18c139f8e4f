"""The Transformer peer: pre-norm encoder blocks on PyTorch's scaled_dot_product_attention.

Bidirectional (no causal mask); padded keys are masked out, padded queries produce zero
updates. SDPA picks its flash / memory-efficient / cuDNN backend itself on GPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bimamba import apply_mask

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """``h + attn(ln1(h))``, then ``h + mlp(ln2(h))``; MLP hidden width ``mlp_hidden``, GELU.

    x: (batch, seq_len, d_model); key_mask: (batch, 1, 1, seq_len) bool (True = attend), or None
    when nothing is padded;
    mask: (batch, seq_len, 1) float (1 = real token), or None when nothing is padded.
    """

    def __init__(self, d_model: int, *, n_heads: int, mlp_hidden: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not a multiple of n_heads={n_heads}")
        self.n_heads, self.dropout_p = n_heads, dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq_len, d_model = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(batch, seq_len, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        x = x + apply_mask(self.dropout(self.attn_out(a.transpose(1, 2).reshape(batch, seq_len, d_model))), mask)
        return x + apply_mask(self.dropout(self.mlp(self.ln2(x))), mask)

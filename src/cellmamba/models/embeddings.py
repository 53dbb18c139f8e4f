"""Input embeddings for the three tokenizations.

- "rank" (GeneMamba): gene-id embedding of the rank-ordered genes.
- "binned" (SC-MAMBA2): gene-id embedding + expression-value encoding, either a categorical
  embedding of the bin index ("categorical") or an MLP on the value as a number ("continuous").
  Values hidden by a masked-value objective (``value_mask``) get one learned "mask value" vector
  instead of their encoding.
- "patch" (scMamba): each patch of ``patch_size`` features is projected by a Linear layer, plus a
  learned embedding of the patch position.

``InputEmbedding(config, d_model)(inputs, values, value_mask=...)`` returns (batch, seq_len, d_model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from ..vocab import PAD_ID

__all__ = ["EMBEDDING_KINDS", "EmbeddingConfig", "InputEmbedding"]

#: the accepted values of ``EmbeddingConfig.kind``
EMBEDDING_KINDS = ("rank", "binned", "patch")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which tokenization the model reads, and its sizes (JSON-serialisable)."""

    kind: str = "rank"  # "rank" | "binned" | "patch"
    vocab_size: int = 0  # token ids, special tokens included (Vocabulary.size); rank and binned
    n_bins: int = 51  # binned: value bins, 0 = not expressed / CLS slot, 1..n_bins-1 expressed
    value_encoding: str = "categorical"  # binned: "categorical" (embedding of the bin) | "continuous" (MLP on the value)
    patch_size: int = 64  # patch: features per patch
    max_patches: int = 1024  # patch: number of learned positions (the longest patch sequence)
    dropout: float = 0.0  # dropout on the summed embedding

    def __post_init__(self):
        def bad(msg):
            raise InputError(f"EmbeddingConfig: {msg}")

        if self.kind not in EMBEDDING_KINDS:
            bad(f"kind must be one of {EMBEDDING_KINDS}, got {self.kind!r}")
        if self.kind in ("rank", "binned") and self.vocab_size <= PAD_ID + 1:
            bad(f"vocab_size must be set (Vocabulary.size) for kind={self.kind!r}, got {self.vocab_size}")
        if self.value_encoding not in ("categorical", "continuous"):
            bad(f"value_encoding must be 'categorical' or 'continuous', got {self.value_encoding!r}")
        if self.kind == "binned" and self.n_bins < 2:
            bad(f"n_bins must be >= 2, got {self.n_bins}")
        if self.kind == "patch" and (self.patch_size < 1 or self.max_patches < 1):
            bad(f"patch_size and max_patches must be >= 1, got {self.patch_size}, {self.max_patches}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout!r}")


class InputEmbedding(nn.Module):
    """Embed one batch of tokens (rank, binned) or patches (patch).

    State dict: ``gene.weight`` (vocab_size, d_model) for rank and binned; binned adds
    ``value.weight`` (n_bins, d_model) [categorical] or ``value.{0,2}.*`` [continuous] and
    ``mask_value`` (d_model,); patch has ``patch.{weight,bias}`` and ``position.weight``
    (max_patches, d_model).
    """

    def __init__(self, config: EmbeddingConfig, d_model: int):
        super().__init__()
        self.config = config
        c = config
        if c.kind in ("rank", "binned"):
            self.gene = nn.Embedding(c.vocab_size, d_model, padding_idx=PAD_ID)
            nn.init.normal_(self.gene.weight, std=0.02)
            with torch.no_grad():
                self.gene.weight[PAD_ID].zero_()
        if c.kind == "binned":
            if c.value_encoding == "categorical":
                self.value = nn.Embedding(c.n_bins, d_model)
                nn.init.normal_(self.value.weight, std=0.02)
            else:
                self.value = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
            self.mask_value = nn.Parameter(torch.zeros(d_model).normal_(std=0.02))
        if c.kind == "patch":
            self.patch = nn.Linear(c.patch_size, d_model)
            self.position = nn.Embedding(c.max_patches, d_model)
            nn.init.normal_(self.position.weight, std=0.02)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, inputs: torch.Tensor, values: torch.Tensor | None = None, *,
                value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed.

        Parameters
        ----------
        inputs : (batch, seq_len) integer token ids (rank, binned) or (batch, n_patches, patch_size) float (patch)
        values : (batch, seq_len), binned only
            Bin indices (categorical) or numeric values (continuous).
        value_mask : (batch, seq_len) bool, binned only, optional
            True where the value is hidden from the model (masked-value objective).

        Returns
        -------
        (batch, seq_len, d_model)
        """
        c = self.config
        if c.kind == "patch":
            if inputs.dim() != 3 or inputs.shape[-1] != c.patch_size:
                raise InputError(f"patch inputs must be (batch, n_patches, {c.patch_size}), got {tuple(inputs.shape)}")
            if inputs.shape[1] > c.max_patches:
                raise InputError(f"{inputs.shape[1]} patches exceed max_patches={c.max_patches}")
            pos = torch.arange(inputs.shape[1], device=inputs.device)
            return self.dropout(self.patch(inputs) + self.position(pos))
        if inputs.dim() != 2 or inputs.is_floating_point():
            raise InputError(f"{c.kind} inputs must be (batch, seq_len) integer token ids, got {inputs.dtype} "
                             f"{tuple(inputs.shape)}")
        if not inputs.is_cuda and inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= c.vocab_size):
            raise InputError(f"token ids must be in [0, {c.vocab_size}), got [{int(inputs.min())}, {int(inputs.max())}]")
        h = self.gene(inputs)
        if c.kind == "binned":
            if values is None or values.shape != inputs.shape:
                raise InputError(f"binned inputs need values of shape {tuple(inputs.shape)}, got "
                                 f"{None if values is None else tuple(values.shape)}")
            if value_mask is not None:  # hidden values may hold anything (e.g. -1): never read them
                values = values.masked_fill(value_mask, 0)
            if c.value_encoding == "categorical":
                v = values.long()
                if not v.is_cuda and v.numel() and (int(v.min()) < 0 or int(v.max()) >= c.n_bins):
                    raise InputError(f"bin indices must be in [0, {c.n_bins}), got [{int(v.min())}, {int(v.max())}]")
                ve = self.value(v)
            else:
                ve = self.value(values.unsqueeze(-1).to(h.dtype))
            if value_mask is not None:
                ve = torch.where(value_mask.unsqueeze(-1), self.mask_value.to(ve.dtype), ve)
            h = h + ve
        return self.dropout(h)

"""Bidirectional Mamba: pad-aware reversal, direction merge, residual blocks and the two BiMamba forms.

Padding contract (every module here): ``attention_mask`` (batch, seq_len) bool, True at real
tokens, RIGHT-padded (each row is ``[True] * length + [False] * (seq_len - length)``; anything
else raises :class:`~cellmamba.errors.InputError`).

- Forward direction: mixers are causal, and padding comes after the real tokens, so no pad
  reaches a real token.
- Reverse direction: :func:`reverse_padded` reverses each cell's real tokens only and leaves
  the padding where it is, so the reversed sequence is right-padded too and the same argument
  holds. The reverse outputs are put back in the original order by the same function (it is an
  involution).
- Mixer inputs are zeroed at padded positions and block outputs there are zero updates,
  so the residual stream of a pad keeps its embedding and never grows.
- Packed rows (:mod:`~cellmamba.models.packing`): several cells per row; the reversal is each
  cell's in place (``rev``, :func:`reverse_rows`) and ``seq_idx`` resets the mixers between cells.

Two bidirectional forms, both with one set of weights shared by the two directions:

- ``merge_every="stack"`` (the default, in :class:`~cellmamba.models.backbone.Backbone`): the whole layer stack runs on the
  sequence and on its reversal (as one batch of twice the size), and the two final states are
  merged once. The direction-wise states are causal in their direction, which a leak-free
  next-token objective needs (forward states at i see tokens <= i, reverse states >= i).
- :class:`BiMambaLayer` (``merge_every="layer"``, Caduceus / SC-MAMBA2 style): each layer merges
  its two directions before the next layer, so every state sees the whole cell; use it only with
  masked objectives.

Merge: "mean" ``(f + r) / 2``; "sum" ``f + r``; "gate" ``g * f + (1 - g) * r`` with
``g = sigmoid(W [f; r] + b)`` (one learned gate per channel and token, GeneMamba Fig. 2).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..errors import InputError

__all__ = [
    "MERGES", "RMSNorm", "check_right_padded", "padded_reversal", "reverse_rows", "reverse_padded", "ResidualBlock",
    "DirectionMerge", "BiMambaLayer", "both_directions", "split_directions",
]

#: the accepted values of ``merge``
MERGES = ("mean", "sum", "gate")


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale; statistics in (at least) float32. x: (..., dim)."""

    def __init__(self, dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = _fused_rms_norm() if x.is_cuda else None
        if fused is not None:  # mamba_ssm's Triton kernel: one pass instead of six elementwise ops
            return fused(x, self.weight, None, eps=self.eps)
        cd = torch.promote_types(x.dtype, torch.float32)
        h = x.to(cd)
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.to(cd)).to(x.dtype)


@functools.lru_cache(maxsize=None)
def _fused_rms_norm():
    """mamba_ssm's Triton RMSNorm where it imports (CUDA only), else None."""
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    except Exception:
        return None
    return rms_norm_fn


def check_right_padded(attention_mask: torch.Tensor) -> torch.Tensor:
    """Validate a right-padded mask and return the lengths.

    Parameters
    ----------
    attention_mask : (batch, seq_len)
        True (or 1) at real tokens.

    Returns
    -------
    lengths : (batch,) int64
    """
    if attention_mask.dim() != 2:
        raise InputError(f"attention_mask must be (batch, seq_len), got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions < lengths[:, None]):
        raise InputError("attention_mask is not right-padded: every row must be True for its real tokens, "
                         "then False for padding (left or interleaved padding is not supported)")
    return lengths


def apply_mask(u: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``u * mask``, or u itself where mask is None (nothing padded: a product with ones is skipped)."""
    return u if mask is None else u * mask


def padded_reversal(lengths: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """The reversal index of a right-padded batch: int64 (batch, seq_len), position p of a row
    of length l reads l - 1 - p (p < l) or itself (padding); None for lengths None (a plain flip)."""
    if lengths is None:
        return None
    pos = torch.arange(seq_len, device=lengths.device)
    return torch.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)


def reverse_rows(x: torch.Tensor, rev: torch.Tensor | None) -> torch.Tensor:
    """x: (batch, seq_len, ...) with position p of each row taken from ``rev[b, p]`` (an
    involution: :func:`padded_reversal`, or a packed batch's per-cell reversal,
    :class:`~cellmamba.models.packing.Packing`); ``rev`` None: a plain flip of the sequence axis."""
    if rev is None:
        return x.flip(1)
    return torch.gather(x, 1, rev.view(*rev.shape, *([1] * (x.dim() - 2))).expand_as(x))


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's first ``lengths[b]`` positions, leaving the padding in place.

    Its own inverse. x: (batch, seq_len, ...) -> same shape; lengths: (batch,), or None when
    nothing is padded (then a plain flip of the sequence axis: no index tensor to build and read).
    """
    return reverse_rows(x, padded_reversal(lengths, x.shape[1]))


class ResidualBlock(nn.Module):
    """Pre-norm residual block around a causal mixer: ``h + dropout(mixer(norm(h) * m)) * m``.

    x: (batch, seq_len, d_model), mask: (batch, seq_len, 1) float (1 = real token), or None
    when nothing is padded.
    """

    def __init__(self, mixer: nn.Module, d_model: int, *, dropout: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = mixer
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.update(self.norm(x), mask, seq_idx=seq_idx)

    def update(self, u: torch.Tensor, mask: torch.Tensor | None, rev: torch.Tensor | None = None,
               seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The residual update from the normed input u (the fused CUDA stack calls this);
        ``seq_idx``: packed rows (the mixer resets between cells)."""
        v = apply_mask(u, mask)
        return apply_mask(self.dropout(self.mixer(v) if seq_idx is None else self.mixer(v, seq_idx)), mask)


class DirectionMerge(nn.Module):
    """Merge forward and (un-reversed) reverse states: "mean" | "sum" | "gate".

    forward, reverse: (batch, seq_len, d_model) -> (batch, seq_len, d_model).
    """

    def __init__(self, d_model: int, *, merge: str = "mean"):
        super().__init__()
        if merge not in MERGES:
            raise InputError(f"merge must be one of {MERGES}, got {merge!r}")
        self.merge = merge
        self.gate = nn.Linear(2 * d_model, d_model) if merge == "gate" else None

    def forward(self, forward: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
        if self.merge == "mean":
            return 0.5 * (forward + reverse)
        if self.merge == "sum":
            return forward + reverse
        g = torch.sigmoid(self.gate(torch.cat([forward, reverse], dim=-1)))
        return g * forward + (1 - g) * reverse


def both_directions(x: torch.Tensor, rev: torch.Tensor | None) -> torch.Tensor:
    """Stack x and its reversal (:func:`reverse_rows`) along the batch: (2 * batch, seq_len, ...)."""
    return torch.cat([x, reverse_rows(x, rev)], dim=0)


def split_directions(y: torch.Tensor, rev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`both_directions`: (forward, reverse in the original order)."""
    forward, reverse = y.chunk(2, dim=0)
    return forward, reverse_rows(reverse, rev)


def _twice(seq_idx: torch.Tensor | None) -> torch.Tensor | None:
    """The sequence index of both directions (a cell reversed in place keeps its positions)."""
    return None if seq_idx is None else torch.cat([seq_idx, seq_idx], dim=0)


class BiMambaLayer(nn.Module):
    """One bidirectional layer: one mixer (shared weights) on both directions, merged, residual.

    ``h + dropout(merge(mixer(u), rev(mixer(rev(u))))) * m`` with ``u = norm(h) * m``.
    x: (batch, seq_len, d_model), mask: (batch, seq_len, 1) float, rev: the reversal index
    (:func:`reverse_rows`); both None when nothing is padded (the masking passes are skipped; the
    reversal is a plain flip); seq_idx: packed rows.
    """

    def __init__(self, mixer: nn.Module, d_model: int, *, merge: str = "mean", dropout: float = 0.0):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.mixer = mixer
        self.merge = DirectionMerge(d_model, merge=merge)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rev: torch.Tensor | None,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.update(self.norm(x), mask, rev, seq_idx)

    def update(self, u: torch.Tensor, mask: torch.Tensor | None, rev: torch.Tensor | None,
               seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The residual update from the normed input u (the fused CUDA stack calls this)."""
        both = both_directions(apply_mask(u, mask), rev)
        y = self.mixer(both) if seq_idx is None else self.mixer(both, _twice(seq_idx))
        forward, reverse = split_directions(y, rev)
        return apply_mask(self.dropout(self.merge(forward, reverse)), mask)

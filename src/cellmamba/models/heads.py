"""Heads: small modules that take a :class:`~cellmamba.models.backbone.BackboneOutput`.

Token-level: :class:`ValueRegressionHead` (masked expression values), :class:`TokenClassificationHead`
(masked or next gene). Cell-level: :func:`pool_cells` / :class:`CellPooling` (CLS, mean over real
tokens, last real token; a causal direction's state is read where it has seen the whole cell),
:class:`ClassifierHead`, :class:`ProjectionHead` (contrastive towers).
Objectives (which positions, which loss) live with the training code, not here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from .backbone import BackboneOutput, _at_last_token

__all__ = [
    "POOLINGS", "HEAD_KINDS", "HeadConfig", "pool_cells", "CellPooling", "ValueRegressionHead",
    "TokenClassificationHead", "next_token_logits", "ClassifierHead", "ProjectionHead", "build_head",
]

#: cell pooling modes: the cell's summary state ("cls", "last"; see :func:`pool_cells`), the mean of real tokens
POOLINGS = ("cls", "mean", "last")
HEAD_KINDS = ("value_regression", "token_classification", "classifier", "projection")


@dataclass(frozen=True)
class HeadConfig:
    """One head of a :class:`~cellmamba.models.model.CellModel` (JSON-serialisable)."""

    kind: str = "classifier"  # "value_regression" | "token_classification" | "classifier" | "projection"
    n_out: int = 0  # classes (token_classification: vocabulary size), or projection width; unused by value_regression
    pooling: str = "mean"  # cell heads: "cls" | "mean" | "last" (scMamba's unidirectional towers: "last")
    hidden: int = 0  # hidden width of the MLP; 0 = none (classifier: a linear probe) or d_model (projection)
    dropout: float = 0.0  # dropout before the output layer (classifier)

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise InputError(f"HeadConfig: kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.pooling not in POOLINGS:
            raise InputError(f"HeadConfig: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.kind != "value_regression" and self.n_out < 1:
            raise InputError(f"HeadConfig: n_out must be >= 1 for kind={self.kind!r}, got {self.n_out}")


def pool_cells(output: BackboneOutput, mode: str = "mean") -> torch.Tensor:
    """One vector per cell from the final states.

    Parameters
    ----------
    output
        Backbone output; uses ``hidden`` (batch, seq_len, d_model), ``attention_mask`` and ``cls``.
    mode
        "mean": the mean of ``hidden`` over real tokens. "cls": ``hidden`` at position 0 (the
        CLS token of binned tokens) and "last": at the last real token, where that state sees
        the whole cell (Transformer, BiMamba with merge_every="layer"). Where it does not,
        both read ``output.cls``, the state in which each direction has read the whole cell:
        BiMamba with merge_every="stack": ``merge(forward at the last real token, reverse at
        position 0)`` (at position 0 the forward direction has read token 0 only, at the last
        token the reverse direction the last token only: half of ``hidden[:, 0]`` would be the
        same for every cell); unidirectional Mamba: the last real token (also for "cls").

    Returns
    -------
    (batch, d_model)
    """
    h, mask = output.hidden, output.attention_mask
    if mode == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    if mode not in ("cls", "last"):
        raise InputError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    if output.cls is not None:
        return output.cls
    if mode == "cls":
        return h[:, 0]
    return _at_last_token(h, mask.sum(1))


class CellPooling(nn.Module):
    """Module form of :func:`pool_cells` (no parameters): output -> (batch, d_model)."""

    def __init__(self, mode: str = "mean"):
        super().__init__()
        if mode not in POOLINGS:
            raise InputError(f"pooling must be one of {POOLINGS}, got {mode!r}")
        self.mode = mode

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return pool_cells(output, self.mode)


class ValueRegressionHead(nn.Module):
    """Per-token expression value: output.hidden (batch, seq_len, d_model) -> (batch, seq_len)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.mlp(output.hidden).squeeze(-1)


class TokenClassificationHead(nn.Module):
    """Per-token logits over ``n_classes`` (genes for masked / next-gene prediction).

    ``forward(output)`` reads the merged states (masked-gene objectives); ``logits(states)``
    maps any (batch, seq_len, d_model) states, e.g. one direction's (see :func:`next_token_logits`).
    """

    def __init__(self, d_model: int, n_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, n_classes)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """states: (batch, seq_len, d_model) -> (batch, seq_len, n_classes)."""
        return self.proj(self.norm(states))

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.logits(output.hidden)


def next_token_logits(head: TokenClassificationHead, output: BackboneOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Leak-free logits of a bidirectional next-token objective.

    Returns
    -------
    next_logits : (batch, seq_len, n_classes)
        From the forward states: position i predicts token i + 1 from tokens <= i.
    prev_logits : (batch, seq_len, n_classes) or None
        From the reverse states: position i predicts token i - 1 from tokens >= i;
        None for a unidirectional backbone.

    Raises
    ------
    InputError
        When the backbone exposes no causal direction-wise states (Transformer, or BiMamba
        with merge_every="layer"), where next-token prediction would see the answer.
    """
    if output.forward is None:
        raise InputError("next-token prediction needs causal direction-wise states; this backbone has none "
                         "(use a masked objective, or a Mamba backbone with merge_every='stack')")
    prev = None if output.reverse is None else head.logits(output.reverse)
    return head.logits(output.forward), prev


class ClassifierHead(nn.Module):
    """Cell classifier: pool -> [Linear, GELU] -> dropout -> Linear. output -> (batch, n_classes)."""

    def __init__(self, d_model: int, n_classes: int, *, pooling: str = "mean", hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.pool = CellPooling(pooling)
        layers: list[nn.Module] = [nn.Linear(d_model, hidden), nn.GELU()] if hidden else []
        self.mlp = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(hidden or d_model, n_classes))

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.mlp(self.pool(output))


class ProjectionHead(nn.Module):
    """Projection for contrastive losses: pool -> Linear -> GELU -> Linear. output -> (batch, d_out)."""

    def __init__(self, d_model: int, d_out: int, *, pooling: str = "mean", hidden: int = 0):
        super().__init__()
        self.pool = CellPooling(pooling)
        hidden = hidden or d_model
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.mlp(self.pool(output))


def build_head(config: HeadConfig, d_model: int) -> nn.Module:
    """The head described by ``config`` for a backbone of width ``d_model``."""
    if config.kind == "value_regression":
        return ValueRegressionHead(d_model)
    if config.kind == "token_classification":
        return TokenClassificationHead(d_model, config.n_out)
    if config.kind == "classifier":
        return ClassifierHead(d_model, config.n_out, pooling=config.pooling, hidden=config.hidden, dropout=config.dropout)
    return ProjectionHead(d_model, config.n_out, pooling=config.pooling, hidden=config.hidden)

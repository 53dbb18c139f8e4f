"""Backbones with one interface: BiMamba (Mamba2 or Mamba1), unidirectional Mamba, Transformer.

``Backbone(config)(x, attention_mask)`` maps embeddings x: (batch, seq_len, d_model) and a
right-padded mask (batch, seq_len) to a :class:`BackboneOutput`. Padding rules and the two
bidirectional forms are described in :mod:`cellmamba.models.bimamba`.

"Same size" (DESIGN.md): same d_model and depth, and a parameter count within 10%;
:func:`same_size_transformer` picks the Transformer's MLP width to get there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from . import _fused
from ._backend import BACKENDS
from .bimamba import MERGES, BiMambaLayer, DirectionMerge, ResidualBlock, RMSNorm, _twice, apply_mask, \
    both_directions, check_right_padded, padded_reversal, split_directions
from .packing import Packing
from .ssm import Mamba1Mixer, Mamba2Mixer
from .transformer import TransformerBlock

__all__ = ["ARCHS", "BackboneConfig", "BackboneOutput", "Backbone", "count_parameters", "same_size_transformer"]

#: the accepted values of ``BackboneConfig.arch``
ARCHS = ("bimamba_mamba2", "bimamba_mamba1", "mamba2", "mamba1", "transformer")


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone hyper-parameters (JSON-serialisable; stored in every checkpoint's config.json)."""

    arch: str = "bimamba_mamba2"  # "bimamba_mamba2" | "bimamba_mamba1" | "mamba2" | "mamba1" (unidirectional) | "transformer"
    d_model: int = 512  # width of the residual stream
    n_layers: int = 6  # depth (number of residual blocks)
    # --- Mamba layers (ignored by "transformer") ---
    d_state: int = 128  # SSM state size (mamba_ssm's Mamba2 default; Mamba1 models usually use 16)
    expand: int = 2  # d_inner = expand * d_model
    headdim: int = 64  # Mamba2 head width; expand * d_model must be a multiple of it
    ngroups: int = 1  # Mamba2 groups sharing B and C
    d_conv: int = 4  # width of the causal depthwise convolution
    chunk_size: int = 256  # tokens per chunk: SSD kernels and references, Mamba1 reference scan
    merge: str = "mean"  # how the two directions are merged: "mean" | "sum" | "gate" (learned sigmoid gate)
    merge_every: str = "stack"  # "stack": run the stack per direction, merge at the end (leak-free directions); "layer": merge in every layer
    backend: str = "auto"  # "auto" (kernels on CUDA if installed, else reference) | "torch" (reference) | "cuda" (kernels or error)
    recompute: bool = False  # Mamba2 on the fused CUDA path: recompute what it keeps for the backward pass (less memory, slower; BiMamba2 d512 x 6 trains 49,152 x 8 tokens in 64 GiB with it, benchmarks/README.md)
    # --- Transformer (ignored by the Mamba archs) ---
    n_heads: int = 8  # attention heads; d_model must be a multiple
    mlp_ratio: float = 4.0  # MLP hidden width = round(mlp_ratio * d_model); see same_size_transformer
    # --- all ---
    dropout: float = 0.0  # dropout on every residual update (and attention weights)

    def __post_init__(self):
        def bad(msg):
            raise InputError(f"BackboneConfig: {msg}")

        if self.arch not in ARCHS:
            bad(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.merge not in MERGES:
            bad(f"merge must be one of {MERGES}, got {self.merge!r}")
        if self.merge_every not in ("stack", "layer"):
            bad(f"merge_every must be 'stack' or 'layer', got {self.merge_every!r}")
        if self.backend not in BACKENDS:
            bad(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        for name in ("d_model", "n_layers", "d_state", "expand", "headdim", "ngroups", "d_conv", "chunk_size", "n_heads"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.arch.endswith("mamba2") and (self.expand * self.d_model) % (self.headdim * self.ngroups):
            bad(f"expand * d_model = {self.expand * self.d_model} must be a multiple of headdim * ngroups = "
                f"{self.headdim * self.ngroups}")
        if self.arch == "transformer":
            if self.d_model % self.n_heads:
                bad(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
            if self.mlp_hidden < 1:
                bad(f"mlp_ratio={self.mlp_ratio} gives an empty MLP")

    @property
    def bidirectional(self) -> bool:
        return self.arch.startswith("bimamba")

    @property
    def mlp_hidden(self) -> int:
        """The Transformer's MLP hidden width."""
        return int(round(self.mlp_ratio * self.d_model))


@dataclass
class BackboneOutput:
    """What a backbone returns; heads take it.

    Attributes
    ----------
    hidden : (batch, seq_len, d_model)
        Final states (bidirectional: merged), zero at padded positions.
    attention_mask : (batch, seq_len) bool
        True at real tokens.
    forward : (batch, seq_len, d_model) or None
        Forward-direction states before the merge; position i depends on tokens <= i only.
        Set for "bimamba_*" with merge_every="stack" and for the unidirectional Mamba archs.
    reverse : (batch, seq_len, d_model) or None
        Reverse-direction states before the merge, in the original token order; position i
        depends on real tokens >= i only. Set for "bimamba_*" with merge_every="stack".
    cls : (batch, d_model) or None
        The one state per cell in which every direction has read every real token, where no
        position of ``hidden`` has: "bimamba_*" with merge_every="stack": ``merge(forward at
        the last real token, reverse at position 0)`` (the backbone's own direction merge);
        unidirectional Mamba: ``forward`` at the last real token. Zero for a cell without real
        tokens. None for the Transformer and merge_every="layer", where ``hidden[:, 0]`` already
        sees the whole cell. Read by "cls" and "last" pooling (:func:`~cellmamba.models.heads.pool_cells`).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    forward: torch.Tensor | None = None
    reverse: torch.Tensor | None = None
    cls: torch.Tensor | None = None


def _mixer(config: BackboneConfig) -> nn.Module:
    common = dict(d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
                  chunk_size=config.chunk_size, backend=config.backend)
    if config.arch.endswith("mamba2"):
        return Mamba2Mixer(config.d_model, headdim=config.headdim, ngroups=config.ngroups, recompute=config.recompute,
                           **common)
    return Mamba1Mixer(config.d_model, **common)


class Backbone(nn.Module):
    """The sequence model: embeddings in, per-token states out.

    State dict: ``layers.{i}.norm.weight``, ``layers.{i}.mixer.*`` (exactly mamba_ssm's Mamba2 /
    Mamba keys), ``layers.{i}.merge.gate.*`` (merge_every="layer", merge="gate"), ``norm_f.*``,
    ``merge.gate.*`` (merge_every="stack", merge="gate"); Transformer: ``layers.{i}.{ln1,qkv,
    attn_out,ln2,mlp}.*``, ``norm_f.*``.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        c = config
        if c.arch == "transformer":
            self.layers = nn.ModuleList(
                TransformerBlock(c.d_model, n_heads=c.n_heads, mlp_hidden=c.mlp_hidden, dropout=c.dropout)
                for _ in range(c.n_layers))
            self.norm_f = nn.LayerNorm(c.d_model)
        elif c.bidirectional and c.merge_every == "layer":
            self.layers = nn.ModuleList(
                BiMambaLayer(_mixer(c), c.d_model, merge=c.merge, dropout=c.dropout) for _ in range(c.n_layers))
            self.norm_f = RMSNorm(c.d_model)
        else:
            self.layers = nn.ModuleList(ResidualBlock(_mixer(c), c.d_model, dropout=c.dropout) for _ in range(c.n_layers))
            self.norm_f = RMSNorm(c.d_model)
            if c.bidirectional:
                self.merge = DirectionMerge(c.d_model, merge=c.merge)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                packing: Packing | None = None, padded: bool | None = None) -> BackboneOutput:
        """Run the backbone.

        Parameters
        ----------
        x : (batch, seq_len, d_model)
            Input embeddings.
        attention_mask : (batch, seq_len) bool, optional
            True at real tokens, right-padded; all True when omitted.
        packing
            Run the layers on packed rows (:func:`~cellmamba.models.packing.plan_packing` of the
            batch's lengths, on x's device): no computation on padding, the same function (each
            cell alone). The outputs are in the padded layout either way. ``attention_mask`` must
            be the plan's (it is not checked again: no host synchronisation). Mamba2, BiMamba2 and
            the Transformer; Mamba1 refuses.
        padded
            Whether any cell of the batch is shorter than seq_len, as the caller knows it from
            building the right-padded ``attention_mask`` on the host (the collators'
            ``batch["padded"]``): the mask is then not checked here, which on a GPU saves two
            waits for the device at the start of every step. None (default): checked.

        Returns
        -------
        BackboneOutput
        """
        if packing is not None:
            return self._forward_packed(x, packing)
        if attention_mask is None:  # no checks to make: no host synchronisation either
            attention_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            lengths, padded = None, False
        elif padded is None:  # checked: two host waits for the device
            lengths = check_right_padded(attention_mask)
            attention_mask = attention_mask.bool()
            padded = not bool(attention_mask.all())
        else:  # the caller built the mask right-padded and says whether anything is padded
            attention_mask = attention_mask.bool()
            lengths = attention_mask.sum(1)
        # nothing padded (the usual pretraining batch): no masking passes (a product with ones), and
        # reversals are plain flips (lengths None)
        mask = attention_mask.unsqueeze(-1).to(x.dtype) if padded else None
        lengths = lengths if padded else None
        rev = padded_reversal(lengths, x.shape[1])
        c = self.config
        hidden = forward = reverse = None
        if c.arch == "transformer":
            # a cell without real tokens attends to its padding rather than to nothing (NaN)
            # no mask at all when nothing is padded, so SDPA may pick its flash kernel
            key_mask = (attention_mask | (lengths == 0)[:, None])[:, None, None, :] if padded else None
            hidden = self._transformer(x, key_mask, mask)
        elif c.bidirectional and c.merge_every == "layer":
            hidden = self._stack(x, mask, rev)
        elif c.bidirectional:
            # both directions as one batch through the shared stack
            mask2 = None if mask is None else torch.cat([mask, mask], dim=0)
            forward, reverse = split_directions(self._stack(both_directions(x, rev), mask2), rev)
        else:
            forward = self._stack(x, mask)
        return self._outputs(hidden, forward, reverse, mask, lengths, attention_mask)

    def _outputs(self, hidden, forward, reverse, mask, lengths, attention_mask) -> BackboneOutput:
        """The :class:`BackboneOutput` from the layers' states in the padded layout: merged
        states, direction states and the cell state, zero at padding."""
        cls = None
        if forward is not None and reverse is not None:
            forward, reverse = apply_mask(forward, mask), apply_mask(reverse, mask)
            hidden = self.merge(forward, reverse)
            # position 0's forward state has read token 0 only: the cell's state is each direction's end
            cls = self.merge(_at_last_token(forward, lengths), reverse[:, 0])
        elif forward is not None:
            hidden = forward = apply_mask(forward, mask)
            cls = _at_last_token(forward, lengths)
        if cls is not None and mask is not None:
            cls = cls * mask[:, 0]
        return BackboneOutput(hidden=apply_mask(hidden, mask), attention_mask=attention_mask, forward=forward,
                              reverse=reverse, cls=cls)

    def _forward_packed(self, x: torch.Tensor, packing: Packing) -> BackboneOutput:
        """:meth:`forward` on packed rows: the layers see (n_rows, row_len) rows of whole cells, the
        cells kept apart by ``seq_idx`` (Mamba2: state and conv reset; Transformer: attention
        within a cell) and reversed cell by cell (``rev``); outputs put back in the padded layout."""
        c = self.config  # Mamba1 mixers refuse seq_idx themselves (Mamba1Mixer.forward)
        attention_mask = torch.arange(x.shape[1], device=x.device) < packing.lengths[:, None]
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        xp = packing.pack(x)
        mask_p = packing.mask.unsqueeze(-1).to(x.dtype)
        seq_idx, rev = packing.seq_idx, packing.rev
        forward = reverse = hidden = None
        if c.arch == "transformer":
            # attention within a cell: the empty tail of a row attends to itself (no row of NaN)
            hidden = packing.unpack(self._transformer(xp, (seq_idx[:, :, None] == seq_idx[:, None, :])[:, None], mask_p))
        elif c.bidirectional and c.merge_every == "layer":
            hidden = packing.unpack(self._stack(xp, mask_p, rev, seq_idx))
        elif c.bidirectional:
            mask2 = torch.cat([mask_p, mask_p], dim=0)
            fp, rp = split_directions(self._stack(both_directions(xp, rev), mask2, None, _twice(seq_idx)), rev)
            forward, reverse = packing.unpack(fp), packing.unpack(rp)
        else:
            forward = packing.unpack(self._stack(xp, mask_p, None, seq_idx))
        return self._outputs(hidden, forward, reverse, mask, packing.lengths, attention_mask)

    def _transformer(self, h: torch.Tensor, key_mask: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, key_mask, mask)
        return self.norm_f(h)

    def _stack(self, h: torch.Tensor, mask: torch.Tensor | None, rev: torch.Tensor | None = None,
               seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """The Mamba layers and the final norm: ``norm_f(h_n)``, ``h_{i+1} = h_i + update_i(norm_i(h_i))``.
        ``rev``: the reversal index of merge_every="layer"; ``seq_idx``: packed rows."""
        if self.config.backend != "torch" and _fused.available(h):
            # same sums, fewer passes: each residual add happens inside the next norm's kernel
            # (mamba_ssm's Triton kernel; backend "torch" asks for the reference throughout)
            update, residual = h, None
            for layer in self.layers:
                u, residual = _fused.add_rms_norm(update, residual, layer.norm.weight, layer.norm.eps)
                update = layer.update(u, mask, rev, seq_idx)
            return _fused.add_rms_norm(update, residual, self.norm_f.weight, self.norm_f.eps)[0]
        for layer in self.layers:
            h = layer(h, mask, rev, seq_idx) if isinstance(layer, BiMambaLayer) else layer(h, mask, seq_idx)
        return self.norm_f(h)


def _at_last_token(states: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """states: (batch, seq_len, d) -> (batch, d) at each row's last real token (the last position
    where ``lengths`` is None: nothing padded; position 0 for a row without real tokens)."""
    if lengths is None:
        return states[:, -1]
    return states[torch.arange(states.shape[0], device=states.device), (lengths - 1).clamp(min=0)]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def _meta_count(config: BackboneConfig) -> int:
    with torch.device("meta"):
        return count_parameters(Backbone(config))


def same_size_transformer(config: BackboneConfig, *, tolerance: float = 0.10) -> BackboneConfig:
    """A Transformer config with ``config``'s d_model and depth and (nearly) its parameter count.

    The MLP hidden width is solved for (parameters are linear in it); ``n_heads`` and
    ``dropout`` are taken from ``config``.

    Parameters
    ----------
    config
        The Mamba backbone to match.
    tolerance
        Largest accepted relative difference of the parameter counts.

    Returns
    -------
    BackboneConfig
        arch="transformer", with ``mlp_ratio`` set.

    Raises
    ------
    InputError
        When even a one-unit MLP leaves the Transformer outside the tolerance (its attention alone
        is larger than the Mamba model).
    """
    target = _meta_count(dataclasses.replace(config, backend="torch"))
    base = dataclasses.replace(config, arch="transformer", backend="torch")
    d = config.d_model
    p1 = _meta_count(dataclasses.replace(base, mlp_ratio=1 / d))
    p2 = _meta_count(dataclasses.replace(base, mlp_ratio=2 / d))
    hidden = max(1, round(1 + (target - p1) / (p2 - p1)))
    out = dataclasses.replace(config, arch="transformer", mlp_ratio=hidden / d)
    got = _meta_count(dataclasses.replace(out, backend="torch"))
    if abs(got - target) > tolerance * target:
        raise InputError(f"same_size_transformer: a Transformer with d_model={d}, n_layers={config.n_layers} has at "
                         f"least {got} parameters, more than {1 + tolerance:.2f} x the {target} of the {config.arch} "
                         "model; change d_model, d_state or expand")
    return out

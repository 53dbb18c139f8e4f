"""Input embeddings for the three tokenizations.

- "rank" (GeneMamba): gene-id embedding of the rank-ordered genes.
- "binned" (SC-MAMBA2): gene-id embedding + expression-value encoding, either a categorical
  embedding of the bin index ("categorical"), an MLP on the value as a number ("continuous"), or
  scGPT's ContinuousValueEncoder form ("continuous_norm": the value clamped at the top bin, Linear,
  ReLU, Linear, LayerNorm, so its scale matches the gene embedding's whatever the number of bins).
  Values hidden by a masked-value objective (``value_mask``) get one learned "mask value" vector
  instead of their encoding.
- "patch" (scMamba): each patch of ``patch_size`` features is projected by a Linear layer, plus a
  learned embedding of the patch position.

Token positions (rank, binned): ``positions="learned"`` adds a learned absolute position embedding
(Geneformer style: position 0 = the first token, ``max_len`` positions) to the token embedding;
``"none"`` (the default, and every model saved before the setting existed) adds nothing.
:func:`positions_for` says which models get them.

``InputEmbedding(config, d_model)(inputs, values, value_mask=...)`` returns (batch, seq_len, d_model).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InputError
from ..vocab import PAD_ID

__all__ = ["EMBEDDING_KINDS", "POSITIONS", "EmbeddingConfig", "InputEmbedding", "positions_for"]

#: the accepted values of ``EmbeddingConfig.kind``
EMBEDDING_KINDS = ("rank", "binned", "patch")
#: the accepted values of ``EmbeddingConfig.value_encoding``
VALUE_ENCODINGS = ("categorical", "continuous", "continuous_norm")
#: the accepted values of ``EmbeddingConfig.positions``
POSITIONS = ("none", "learned")


def positions_for(kind: str, backbone_arch: str) -> str:
    """The ``EmbeddingConfig.positions`` a model of tokenization ``kind`` and backbone
    ``backbone_arch`` gets.

    The rule: "learned" for a Transformer ("transformer") on rank tokens, "none" otherwise.

    - Rank tokens are genes sorted by normalised expression: the order IS the encoding, and a
      Transformer without positions sees the cell as an unordered set of genes (attention is
      permutation-equivariant). Geneformer, the Transformer these tokens come from, uses learned
      absolute positions; so does its peer here.
    - Binned tokens are a set of (gene, value) pairs, the value carrying the expression: no
      positions, as scGPT.
    - Mamba backbones see the order through their scan: no positions, as GeneMamba and SC-MAMBA2.
    - Patch tokens always have learned patch positions of their own (``max_patches``): "none".

    Parameters
    ----------
    kind
        ``EmbeddingConfig.kind``: "rank" | "binned" | "patch".
    backbone_arch
        ``BackboneConfig.arch``, e.g. "bimamba_mamba2" or "transformer".

    Returns
    -------
    str
        "learned" or "none"; set ``max_len`` (e.g. the context length) with "learned".
    """
    from .backbone import ARCHS

    if kind not in EMBEDDING_KINDS:
        raise InputError(f"positions_for: kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
    if backbone_arch not in ARCHS:
        raise InputError(f"positions_for: backbone_arch must be one of {ARCHS}, got {backbone_arch!r}")
    return "learned" if kind == "rank" and backbone_arch == "transformer" else "none"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which tokenization the model reads, and its sizes (JSON-serialisable)."""

    kind: str = "rank"  # "rank" | "binned" | "patch"
    vocab_size: int = 0  # token ids, special tokens included (Vocabulary.size); rank and binned
    n_bins: int = 51  # binned: value bins, 0 = not expressed / CLS slot, 1..n_bins-1 expressed
    value_encoding: str = "categorical"  # binned: "categorical" (embedding of the bin) | "continuous" (MLP on the value) | "continuous_norm" (scGPT's form)
    patch_size: int = 64  # patch: features per patch
    max_patches: int = 1024  # patch: number of learned positions (the longest patch sequence)
    dropout: float = 0.0  # dropout on the summed embedding
    positions: str = "none"  # rank, binned: "none" | "learned" (absolute position embedding, position 0 = first token); see positions_for
    max_len: int = 0  # positions="learned": number of learned positions, the longest sequence the model reads (<cls> included); ignored with "none"

    def __post_init__(self):
        def bad(msg):
            raise InputError(f"EmbeddingConfig: {msg}")

        if self.kind not in EMBEDDING_KINDS:
            bad(f"kind must be one of {EMBEDDING_KINDS}, got {self.kind!r}")
        if self.kind in ("rank", "binned") and self.vocab_size <= PAD_ID + 1:
            bad(f"vocab_size must be set (Vocabulary.size) for kind={self.kind!r}, got {self.vocab_size}")
        if self.value_encoding not in VALUE_ENCODINGS:
            bad(f"value_encoding must be one of {VALUE_ENCODINGS}, got {self.value_encoding!r}")
        if self.kind == "binned" and self.n_bins < 2:
            bad(f"n_bins must be >= 2, got {self.n_bins}")
        if self.kind == "patch" and (self.patch_size < 1 or self.max_patches < 1):
            bad(f"patch_size and max_patches must be >= 1, got {self.patch_size}, {self.max_patches}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.positions not in POSITIONS:
            bad(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "learned":
            if self.kind == "patch":
                bad("positions='learned' is for token inputs (rank, binned); patch inputs always have learned "
                    "patch positions (max_patches)")
            if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
                bad(f"max_len must be an integer >= 1 with positions='learned' (the longest sequence the model "
                    f"reads, e.g. the context length), got {self.max_len!r}")


class InputEmbedding(nn.Module):
    """Embed one batch of tokens (rank, binned) or patches (patch).

    State dict: ``gene.weight`` (vocab_size, d_model) for rank and binned; binned adds
    ``value.weight`` (n_bins, d_model) [categorical], ``value.{0,2}.*`` [continuous] or
    ``value.{0,2,3}.*`` [continuous_norm] and
    ``mask_value`` (d_model,); patch has ``patch.{weight,bias}`` and ``position.weight``
    (max_patches, d_model); rank and binned with ``positions="learned"`` have ``position.weight``
    (max_len, d_model). Position ``i`` is added to token ``i`` of every cell (right padding keeps
    a real token's position whatever the padding); ``<pad>`` tokens get no position.
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
            elif c.value_encoding == "continuous":
                self.value = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
            else:  # scGPT's ContinuousValueEncoder (Linear, ReLU, Linear, LayerNorm); the clamp is in forward
                self.value = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model),
                                           nn.LayerNorm(d_model))
                # scGPT also layer-normalises its gene embedding; ours starts at std 0.02, so the value
                # encoding starts at that scale too (a unit-scale value vector drowns the gene identity)
                nn.init.constant_(self.value[3].weight, 0.02)
            self.mask_value = nn.Parameter(torch.zeros(d_model).normal_(std=0.02))
        if c.positions == "learned":
            self.position = nn.Embedding(c.max_len, d_model)
            nn.init.normal_(self.position.weight, std=0.02)
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
            elif c.value_encoding == "continuous":
                ve = self.value(values.unsqueeze(-1).to(h.dtype))
            else:
                ve = self.value(values.clamp(max=c.n_bins - 1).unsqueeze(-1).to(h.dtype))
            if value_mask is not None:
                ve = torch.where(value_mask.unsqueeze(-1), self.mask_value.to(ve.dtype), ve)
            h = h + ve
        if c.positions == "learned":
            if inputs.shape[1] > c.max_len:
                raise InputError(f"{inputs.shape[1]} tokens exceed the max_len={c.max_len} learned positions of this "
                                 "model; crop the cells to at most max_len tokens")
            pos = self.position.weight[:inputs.shape[1]].to(h.dtype)
            h = h + pos * (inputs != PAD_ID).unsqueeze(-1).to(h.dtype)
        return self.dropout(h)

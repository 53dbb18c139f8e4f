"""Binned tokenizer (SC-MAMBA2 / scGPT): CLS, then each expressed gene with its per-cell
quantile bin.

Bins, per cell: edges = ``np.quantile(nonzero, np.linspace(0, 1, n_bins - 1))`` over the
cell's non-zero counts of vocabulary genes (scGPT's edges, bit-identical); a value x is on no edge -> its ``np.digitize`` bin, ``1..n_bins-1``;
bin 0 means "not expressed" and is never stored (the collator samples unexpressed measured
genes later).

Ties (DEFINED here, unlike scGPT): on raw counts ~90% of non-zeros equal some edge (most
counts are 1 or 2, so many edges coincide). scGPT draws such a value's bin uniformly from
the bins its tied edges span, ``{a+1, ..., b}`` with a = #edges < x and b = #edges <= x, so
its bins of raw counts are largely random. We take the middle of that range, rounded down:
``bin = (a + b + 1) // 2`` (scGPT's expected bin, floored; equal to digitize's bin when x is
on no edge). It is deterministic, monotone in x (a larger value never gets a smaller bin),
and keeps tied values in the middle of the bins they span instead of all at one end (the
low or high side of np.digitize would put every count of 1 in bin 1, or in bin ~30).

Which value: the raw count. Per-cell quantile bins are invariant to any strictly increasing
per-cell transform (e.g. log1p(count / total * target_sum)): the edges are interpolated at
the same ranks with the same weights, so every comparison, and every bin, is unchanged (up
to floating-point rounding of interpolated edges, which raw integer counts avoid). Binning
raw counts therefore equals binning scGPT's normalised + log1p values, without computing them.

Long cells: a cell with more than ``max_len - 1`` expressed genes keeps ``max_len - 1``
(bins are computed over ALL its expressed genes first, as scGPT bins before it samples):
``long_cells="top"`` keeps the highest counts, ties by gene index ascending;
``long_cells="sample"`` keeps a uniform random subset drawn from a counter-based hash of
(seed, global cell index, gene index), so the result does not depend on chunking and the
seed in the manifest reproduces it. Kept genes are stored in ascending gene order after CLS.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import _kernels as K
from ._common import TokenBatch, csr_chunk

__all__ = ["BinnedConfig", "tokenize_binned", "LONG_CELLS"]

LONG_CELLS = ("top", "sample")


@dataclass(frozen=True)
class BinnedConfig:
    """Settings of the binned tokenizer."""

    n_bins: int = 51           # bins incl. bin 0 (= not expressed); scGPT / SC-MAMBA2: 51
    max_len: int = 1200        # tokens per cell incl. CLS (scGPT / SC-MAMBA2 fine-tuning: 1,200)
    long_cells: str = "top"    # cells with > max_len - 1 expressed genes: "top" or "sample"
    seed: int = 0              # seed of long_cells="sample" (recorded in the manifest)

    def __post_init__(self):
        if not isinstance(self.n_bins, (int, np.integer)) or not 3 <= self.n_bins <= 256:
            raise InputError(f"BinnedConfig: n_bins must be an integer in 3..256 (uint8 bins), got {self.n_bins!r}")
        if not isinstance(self.max_len, (int, np.integer)) or self.max_len < 2:
            raise InputError(f"BinnedConfig: max_len must be an integer >= 2 (CLS + one gene), got {self.max_len!r}")
        if self.long_cells not in LONG_CELLS:
            raise InputError(f"BinnedConfig: long_cells must be one of {LONG_CELLS}, got {self.long_cells!r}")
        if not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise InputError(f"BinnedConfig: seed must be an integer in [0, 2**63), got {self.seed!r}")

    @property
    def quantiles(self) -> np.ndarray:
        """float64 (n_bins - 1,): the quantile levels of the edges."""
        return np.linspace(0, 1, self.n_bins - 1)


def tokenize_binned(X, config: BinnedConfig = BinnedConfig(), *, first_cell: int = 0,
                    counts: bool = True) -> TokenBatch:
    """Bin cells (see the module docstring for the rules).

    Parameters
    ----------
    X
        (n_cells, n_genes) scipy CSR of raw counts, columns = vocabulary genes.
    config
        :class:`BinnedConfig`.
    first_cell
        Global index of row 0 (keys the ``long_cells="sample"`` draw to the cell, not the chunk).
    counts
        True (default): X must hold raw counts. False: any finite non-negative values (e.g. the
        log-normalised X of a dataset published without counts: scGPT's ``data_is_raw=False``
        path bins those values the same way).

    Returns
    -------
    TokenBatch: per cell ``[CLS_ID, N_SPECIAL + gene...]`` (ascending gene) with uint8
    values ``[0, bin...]``, at most ``max_len`` tokens; an all-zero cell is ``[CLS_ID]``.
    ``stats["n_cells_shortened"]``.
    """
    return _binned_chunk(csr_chunk(X, counts=counts), config, first_cell)


def _binned_chunk(chunk, config: BinnedConfig, first_cell: int) -> TokenBatch:
    size = chunk.counts.shape[0] + chunk.n_cells
    tokens = np.empty(size, dtype=np.uint32)
    values = np.empty(size, dtype=np.uint8)
    lengths = np.empty(chunk.n_cells, dtype=np.int64)
    n_long = K.binned_kernel(chunk.indptr, chunk.genes, chunk.counts, config.quantiles, int(config.max_len),
                             config.long_cells == "sample", int(config.seed), int(first_cell),
                             tokens, values, lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = offsets[-1]
    return TokenBatch(offsets, tokens[:n], values[:n], {"n_cells_shortened": int(n_long)})

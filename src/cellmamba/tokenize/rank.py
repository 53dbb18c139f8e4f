"""Rank tokenizer (GeneMamba; Geneformer's rank value encoding).

Each cell's counts are normalised by its total counts (x ``target_sum``), divided by each
gene's corpus non-zero median (``nonzero_median`` of gene_stats.tsv), and the expressed genes
are ranked by that score, highest first; the top ``max_len`` become the cell's tokens
(vocabulary ids ``N_SPECIAL + gene``), with no values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import CorruptFileError, InputError
from ..keys import VAR_FEATURE_ID
from . import _kernels as K
from ._common import TokenBatch, csr_chunk

__all__ = ["RankConfig", "tokenize_rank", "read_gene_stats", "gene_medians"]


@dataclass(frozen=True)
class RankConfig:
    """Settings of the rank tokenizer."""

    max_len: int = 2048        # tokens kept per cell (Geneformer / GeneMamba: 2,048)
    target_sum: float = 1e4    # library size counts are normalised to before dividing by the median

    def __post_init__(self):
        if not isinstance(self.max_len, (int, np.integer)) or self.max_len < 1:
            raise InputError(f"RankConfig: max_len must be an integer >= 1, got {self.max_len!r}")
        if not (isinstance(self.target_sum, (int, float)) and np.isfinite(self.target_sum) and self.target_sum > 0):
            raise InputError(f"RankConfig: target_sum must be a finite number > 0, got {self.target_sum!r}")


def read_gene_stats(path: str | os.PathLike) -> pd.DataFrame:
    """Read gene_stats.tsv (columns feature_id, ..., nonzero_median; "NaN" = never detected)."""
    try:
        stats = pd.read_csv(path, sep="\t", dtype={VAR_FEATURE_ID: str})
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected gene_stats.tsv)") from exc
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorruptFileError(f"{path}: not a readable TSV ({type(exc).__name__}: {exc})") from exc
    stats.attrs["source"] = str(path)
    return stats


def gene_medians(stats: pd.DataFrame, *, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Checked (feature_ids, nonzero_median float64) of a gene statistics table.

    Raises InputError for missing columns, duplicated ids, or a median that is <= 0 or
    infinite (a non-zero median of positive values is always > 0); NaN is allowed (gene
    never detected: excluded from the ranks).
    """
    source = source or stats.attrs.get("source", "gene_stats")
    missing = [c for c in (VAR_FEATURE_ID, "nonzero_median") if c not in stats]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing} (expected gene_stats.tsv columns)")
    ids = stats[VAR_FEATURE_ID].astype(str).to_numpy()
    if pd.Index(ids).has_duplicates:
        raise InputError(f"{source}: duplicated feature_id(s) {pd.Index(ids)[pd.Index(ids).duplicated()][:5].tolist()}")
    try:
        med = pd.to_numeric(stats["nonzero_median"], errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: column 'nonzero_median' must be numeric ({exc})") from exc
    bad = ~np.isnan(med) & ~(np.isfinite(med) & (med > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: nonzero_median of {ids[i]} is {med[i]!r}; expected a finite value > 0 or NaN")
    return ids, med


def tokenize_rank(X, median: np.ndarray, config: RankConfig = RankConfig(), *,
                  totals: np.ndarray | None = None, counts: bool = True) -> TokenBatch:
    """Rank-encode cells.

    Parameters
    ----------
    X
        (n_cells, n_genes) scipy CSR of raw counts, columns = vocabulary genes.
    median
        float64 (n_genes,): each gene's corpus non-zero median of count / total * target_sum
        (gene_stats.tsv); NaN = never detected, such genes are excluded and counted.
    config
        :class:`RankConfig`.
    totals
        float64 (n_cells,): total counts per cell; default the row sums of ``X``.
    counts
        True (default): X must hold raw counts. False: any finite non-negative values, e.g.
        expm1 of log-normalised data with ``totals = target_sum`` (then score = value / median).

    Returns
    -------
    TokenBatch with ``tokens`` = vocabulary ids (``N_SPECIAL + gene``) in rank order, at most
    ``max_len`` per cell, ``values`` None; ``stats["n_nonzero_no_median"]``.

    Notes
    -----
    score = float32(count * (target_sum / total) * (1 / median)): float64 products rounded
    once to float32 (about what Geneformer's float32 matrices give; products instead of
    divisions for speed, the same ranking up to rounding). Order: score descending; ties
    (equal float32 scores) by gene index ascending, so the output is deterministic
    (Geneformer uses an unstable argsort). A cell with no expressed gene gets no tokens.
    """
    chunk = csr_chunk(X, totals=totals, counts=counts)
    median = np.ascontiguousarray(median, dtype=np.float64)
    if median.shape != (X.shape[1],):
        raise InputError(f"median has shape {median.shape}, expected ({X.shape[1]},) (one per gene of X)")
    return _rank_chunk(chunk, median, config)


def _rank_chunk(chunk, median: np.ndarray, config: RankConfig) -> TokenBatch:
    out = np.empty(chunk.counts.shape[0], dtype=np.uint32)
    lengths = np.empty(chunk.n_cells, dtype=np.int64)
    inv_median = 1.0 / median  # NaN stays NaN (gene skipped)
    n_nan = K.rank_kernel(chunk.indptr, chunk.genes, chunk.counts, chunk.totals, inv_median,
                          float(config.target_sum), int(config.max_len), out, lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenBatch(offsets, out[:offsets[-1]], None, {"n_nonzero_no_median": int(n_nan)})

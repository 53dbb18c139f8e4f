"""A fine-tuning dataset in the pretrained model's tokens.

The dataset's genes are matched to the pretraining vocabulary (Ensembl ids in var ``gene_id``
where the publication gives them, otherwise symbols in var ``gene_name`` through
:func:`cellmamba.genes.map_symbols`); genes outside it are dropped and counted. Values:

- binned: raw counts where the publication provides them; otherwise the log-normalised values
  (per-cell quantile bins depend only on each cell's order of values, so both give the same
  bins up to ties: scGPT's ``data_is_raw=False`` path bins log-normalised values too);
- rank: count / total x 1e4 / corpus median, the totals over ALL the cell's genes; without
  counts, expm1 of the log-normalised values (already count / total x 1e4).

Nothing here fakes counts: the value kind used is recorded in :class:`DatasetTokens`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from ..datasets import VAR_GENE_ID, VAR_GENE_NAME, counts_matrix, log_normalized, x_kind
from ..datasets.selection import select_genes
from ..errors import InputError
from ..genes import looks_like_ensembl, map_symbols
from ..keys import LAYER_COUNTS, VAR_FEATURE_ID, VAR_FEATURE_NAME
from ..tokenize import BinnedConfig, RankConfig, TokenBatch, tokenize_binned, tokenize_rank
from ..vocab import N_SPECIAL

__all__ = ["DatasetTokens", "vocabulary_index", "check_gene_overlap", "gene_weights", "select_genes",
           "tokenize_dataset", "TokenCells", "MIN_GENE_OVERLAP", "WARN_GENE_OVERLAP"]

log = logging.getLogger(__name__)

# Defaults of evaluation.gene_overlap (config/schema.yaml): the fraction of a dataset's expression
# (column sums of counts, else X) in genes that match the vocabulary (the Census gene table). It is
# weighted by expression because old annotations carry thousands of clone-named lncRNAs (RP11-...)
# that are since renamed but barely expressed: the celltypist sample matches 59% of its 32,786
# symbols but 92% of its counts, HSMM's 2014 FPKM 50% of its symbols but 91% of its expression
# (by its Ensembl ids: 92% of genes); the demo's datasets match 0.91-0.93 of genes. Mouse-style
# symbols ('Cd3e') match ~1%. Below one half, most of each cell's expression would be dropped and
# the model judged on another gene set: the run fails. Between one half and 0.8 (an old or
# different id space) it runs with a WARNING.
MIN_GENE_OVERLAP = 0.5
WARN_GENE_OVERLAP = 0.8


@dataclass
class DatasetTokens:
    """Tokens of every cell of a dataset, in the dataset's cell order."""

    batch: TokenBatch          # CSR tokens (+ uint8 bins for binned)
    measured: np.ndarray       # bool (n_vocab_genes,): vocabulary genes the dataset has (after gene selection)
    tokenizer: str             # "rank" | "binned"
    value_source: str          # "counts" | "log1p_norm" | "log1p(normalized)" | "expm1(<either>)"
    n_genes_used: int          # dataset genes mapped to the vocabulary and selected
    n_genes_unmapped: int      # dataset genes with no vocabulary id (dropped)
    max_len: int               # tokens per cell the tokenizer kept at most
    max_len_from: str | None = None  # where max_len came from (cellmamba.embed: "argument" or the model's file)


def _strip_version(ids) -> np.ndarray:
    return pd.Index(ids).astype(str).str.replace(r"\.\d+$", "", regex=True).to_numpy()


def vocabulary_index(var: pd.DataFrame, vocabulary: pd.DataFrame, *, source: str = "dataset",
                     aliases: pd.DataFrame | None = None) -> np.ndarray:
    """int64 (n_vars,): each dataset gene's index in ``vocabulary`` (columns feature_id,
    feature_name, in token order), -1 where it has none.

    Ensembl ids (``var["gene_id"]``, CELLxGENE's ``var["feature_id"]``, or a var index of Ensembl
    ids; versions ignored) when present, else symbols (``var["gene_name"]``, CELLxGENE's
    ``var["feature_name"]``, or the var index), legacy symbols through ``aliases``
    (:func:`cellmamba.genes.read_aliases`) when given."""
    for key in (VAR_FEATURE_ID, VAR_FEATURE_NAME):
        if key not in vocabulary:
            raise InputError(f"vocabulary table: missing column {key!r} (expected gene_stats.tsv)")
    vocab_ids = pd.Index(_strip_version(vocabulary[VAR_FEATURE_ID]))
    id_key = next((k for k in (VAR_GENE_ID, VAR_FEATURE_ID) if k in var), None)
    ids = var[id_key] if id_key else (var.index if looks_like_ensembl(var.index) else None)
    if ids is not None:
        index = vocab_ids.get_indexer(_strip_version(ids))
        how = "Ensembl id"
    else:
        name_key = next((k for k in (VAR_GENE_NAME, VAR_FEATURE_NAME) if k in var), None)
        symbols = var[name_key] if name_key else var.index
        mapping = map_symbols(np.asarray(symbols, dtype=str), vocabulary, aliases=aliases, source=source)
        index = np.where(mapping.mapped, vocab_ids.get_indexer(_strip_version(mapping.feature_ids)), -1)
        how = "symbol"
    index = np.asarray(index, dtype=np.int64)
    # two dataset columns on one vocabulary gene (duplicated symbols): keep the first
    seen = pd.Series(index).duplicated() & (index >= 0)
    index[seen.to_numpy()] = -1
    log.info("%s: %d of %d genes matched the vocabulary by %s", source, int((index >= 0).sum()), len(index), how)
    if not (index >= 0).any():
        raise InputError(f"{source}: none of its {len(index)} genes is in the model's vocabulary "
                         f"(matched by {how}; first genes {list(var.index[:3])})")
    return index


def check_gene_overlap(index: np.ndarray, *, weights: np.ndarray | None = None, source: str,
                       min_fraction: float = MIN_GENE_OVERLAP, warn_fraction: float = WARN_GENE_OVERLAP,
                       config_key: str = "evaluation.gene_overlap") -> float:
    """The fraction of a dataset's expression in genes that match the vocabulary, checked
    against the thresholds.

    Parameters
    ----------
    index
        int (n_vars,): :func:`vocabulary_index` (-1: no vocabulary gene).
    weights
        (n_vars,) non-negative expression per gene (:func:`gene_weights`); None: every gene
        counts once.
    source
        The dataset, for messages.
    min_fraction, warn_fraction
        Below ``min_fraction``: InputError naming ``source``, the fraction, the threshold and
        ``config_key``; below ``warn_fraction``: a WARNING.

    Returns
    -------
    The matched fraction (of expression; of genes when ``weights`` is None or all zero).
    """
    matched = np.asarray(index) >= 0
    n_matched, n_genes = int(matched.sum()), int(matched.size)
    gene_fraction = n_matched / n_genes if n_genes else 0.0
    fraction = gene_fraction
    what = f"{source}: {n_matched} of {n_genes} genes ({gene_fraction:.1%})"
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        total = float(weights.sum())
        if total > 0:
            fraction = float(weights[matched].sum()) / total
            what += f", {fraction:.1%} of the expression,"
    what += " match the model's vocabulary (human Ensembl ids or HGNC symbols)"
    if fraction < min_fraction:
        raise InputError(f"{what}: {fraction:.3f} is below {config_key}.min_fraction = {min_fraction:g}. Another "
                         "species (mouse-style symbols such as 'Cd3e'), or var names that are neither symbols nor "
                         f"Ensembl ids? Map the genes to human ones, or lower {config_key}.min_fraction to run anyway")
    if fraction < warn_fraction:
        log.warning("%s: %.3f is below %s.warn_fraction = %g; the model sees only part of each cell's expression",
                    what, fraction, config_key, warn_fraction)
    return fraction


def gene_weights(adata) -> np.ndarray:
    """float64 (n_vars,): each gene's total absolute expression (layer counts, else X)."""
    X = adata.layers[LAYER_COUNTS] if LAYER_COUNTS in adata.layers else adata.X
    X = abs(X) if sp.issparse(X) else np.abs(np.asarray(X))
    return np.asarray(X.sum(axis=0), dtype=np.float64).ravel()


def _to_vocab_columns(X, index: np.ndarray, n_vocab: int) -> sp.csr_matrix:
    """(n_cells, n_vars) -> (n_cells, n_vocab) with column j moved to index[j]; index -1 dropped."""
    X = sp.csr_matrix(X)
    cols = np.flatnonzero(index >= 0)
    sub = X[:, cols].tocsr()
    out = sp.csr_matrix((sub.data, index[cols][sub.indices], sub.indptr), shape=(X.shape[0], n_vocab))
    out.sort_indices()
    out.eliminate_zeros()
    return out


def tokenize_dataset(adata, vocabulary: pd.DataFrame, *, tokenizer: str, max_len: int,
                     genes: np.ndarray | None = None, medians: np.ndarray | None = None,
                     n_bins: int = BinnedConfig.n_bins, source: str = "dataset",
                     aliases: pd.DataFrame | None = None) -> DatasetTokens:
    """Tokens of every cell of ``adata`` for a model pretrained on ``vocabulary``.

    Parameters
    ----------
    adata
        A dataset in the standard schema (``uns["cellmamba"]["x_kind"]``).
    vocabulary
        The pretraining gene table (gene_stats.tsv: feature_id, feature_name[, nonzero_median]).
    tokenizer
        "binned" or "rank" (the pretrained model's).
    max_len
        Tokens per cell (binned: CLS included).
    genes
        bool (n_vars,): genes to use (:func:`select_genes`); default all.
    medians
        float64 (n_vocab,): rank only, the corpus non-zero medians (default: the table's
        ``nonzero_median`` column).
    n_bins
        binned only: value bins incl. bin 0 (the pretrained model's ``embedding.n_bins``;
        default :class:`~cellmamba.tokenize.BinnedConfig`'s, 51).
    aliases
        Legacy-symbol alias table for :func:`vocabulary_index` (None: none).
    """
    if tokenizer not in ("binned", "rank"):
        raise InputError(f"tokenize_dataset: tokenizer must be 'binned' or 'rank', got {tokenizer!r}")
    index = vocabulary_index(adata.var, vocabulary, source=source, aliases=aliases)
    n_unmapped = int((index < 0).sum())
    if genes is not None:
        genes = np.asarray(genes, dtype=bool)
        if genes.shape != (adata.n_vars,):
            raise InputError(f"{source}: genes mask has shape {genes.shape}, expected ({adata.n_vars},)")
        index = np.where(genes, index, -1)
    n_vocab = len(vocabulary)
    has_counts = LAYER_COUNTS in adata.layers or x_kind(adata, source=source) == "counts"
    if has_counts:
        raw = sp.csr_matrix(counts_matrix(adata, source=source))
        totals = np.asarray(raw.sum(axis=1), dtype=np.float64).ravel()
        X, value_source, integers = _to_vocab_columns(raw, index, n_vocab), "counts", True
    else:
        lognorm = log_normalized(adata, source=source)
        X, integers = _to_vocab_columns(lognorm, index, n_vocab), False
        # normalized (TPM / FPKM / CPM): rescaled per cell to 1e4, then log1p (schema.log_normalized)
        value_source = "log1p(normalized)" if x_kind(adata, source=source) == "normalized" else "log1p_norm"
        totals = None
    if tokenizer == "binned":
        batch = tokenize_binned(X, BinnedConfig(max_len=max_len, n_bins=n_bins), counts=integers)
    else:
        if medians is None:
            if "nonzero_median" not in vocabulary:
                raise InputError("vocabulary table: the rank tokenizer needs its 'nonzero_median' column")
            medians = pd.to_numeric(vocabulary["nonzero_median"]).to_numpy(np.float64)
        if not has_counts:
            X = X.copy()
            X.data = np.expm1(X.data)
            totals = np.full(X.shape[0], RankConfig().target_sum)  # already count / total x 1e4
            value_source = f"expm1({value_source})"
        batch = tokenize_rank(X, medians, RankConfig(max_len=max_len), totals=totals, counts=integers)
    measured = np.zeros(n_vocab, dtype=bool)
    measured[index[index >= 0]] = True
    log.info("%s: %d cells tokenized (%s, max_len %d, values from %s), %d genes used, %d unmapped",
             source, len(batch), tokenizer, max_len, value_source, int(measured.sum()), n_unmapped)
    return DatasetTokens(batch, measured, tokenizer, value_source, int(measured.sum()), n_unmapped, max_len)


class TokenCells(Dataset):
    """Items of :class:`DatasetTokens` in the form the training collators read
    (see :class:`cellmamba.train.TokenDataset`), restricted to ``cells`` (default all)."""

    def __init__(self, tokens: DatasetTokens, cells: np.ndarray | None = None):
        self.tokens = tokens
        self.cells = np.arange(len(tokens.batch)) if cells is None else np.asarray(cells, dtype=np.int64)
        self.lengths = np.diff(tokens.batch.offsets)[self.cells].astype(np.int64)

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i) -> dict:
        c = int(self.cells[int(i)])
        tok, val = self.tokens.batch.cell(c)
        tok = np.asarray(tok, dtype=np.int64)
        return {"tokens": tok, "values": None if val is None else np.asarray(val), "dataset": 0,
                "length": int(tok.shape[0]), "cell_index": c, "measured": self.tokens.measured, "stored": tok,
                "complete": int(tok.shape[0]) < self.tokens.max_len}


def gene_token_ids(measured: np.ndarray) -> torch.Tensor:
    """Token ids of the measured genes (int64)."""
    return torch.from_numpy(np.flatnonzero(measured).astype(np.int64) + N_SPECIAL)

"""Gene-level metrics (GeneMamba's gene analyses, issue 24): gene-pair scores against pathway
co-membership, and the reconstruction of a cell's gene ranking.

Gene pairs. Genes are positions ``0 .. n_genes - 1`` of an evaluated gene list; a pair is two
positions ``a < b``. :func:`membership_matrix` and :func:`comembership` say which pairs share a
gene set; :func:`sample_pairs` draws a bounded, stratified subset of all pairs;
:func:`cosine_scores` and :func:`coexpression_scores` score pairs; :func:`pair_scores` turns
scores and labels into AUROC / AUPRC (scikit-learn's ``roc_auc_score`` and
``average_precision_score``).

Rank reconstruction. A cell's input is its rank sequence (gene ids, the highest-ranked first);
a model's reconstruction is the gene it predicts at each position. The reconstruction's own
ranking is its genes in the order of their first occurrence (:func:`reconstruction_order`).
:func:`topk_overlap` and :func:`rank_spearman` compare the two rankings; :func:`rank_pairs`
gives the (input rank, reconstructed rank) of every gene present in both, for density plots.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError

__all__ = ["METRICS", "membership_matrix", "comembership", "sample_pairs",
           "pair_scores", "pair_set_scores", "cosine_scores", "coexpression_scores", "reconstruction_order", "topk_overlap",
           "rank_spearman", "rank_pairs", "score_reconstruction", "summarize_reconstruction"]

#: the metrics of the gene-pair and rank-reconstruction tables -> direction (:mod:`.rows`)
METRICS = {"auroc": "higher", "auprc": "higher", "positive_rate": "unranked", "n_pairs": "unranked",
           "n_positive": "unranked", "n_genes": "unranked",
           # the default k first, so the table lists them in the order of k (a family sorts by name)
           "overlap_top10": "higher", "overlap_top50": "higher", "overlap_top100": "higher", "overlap_top*": "higher",
           "spearman": "higher", "n_cells": "unranked", "n_cells_spearman": "unranked"}

#: fewest genes present in both rankings for a cell's Spearman correlation (with two, any
#: ranking gives +-1)
MIN_SPEARMAN_GENES = 3


# ---------------------------------------------------------------- gene pairs
def membership_matrix(genes: Sequence, sets: Mapping[str, Iterable] | Sequence[Iterable]) -> sp.csr_matrix:
    """Which evaluated gene is in which set.

    Parameters
    ----------
    genes
        (n_genes,) the evaluated genes (symbols or token ids), distinct.
    sets
        The gene sets: name -> members, or a sequence of member collections (same kind of
        identifiers as ``genes``); members outside ``genes`` are ignored.

    Returns
    -------
    scipy.sparse.csr_matrix of bool, (n_sets, n_genes): entry (s, g) True where set s holds gene g.
    """
    index = pd.Index(list(genes))
    if index.has_duplicates:
        raise InputError(f"membership_matrix: genes repeat, e.g. {index[index.duplicated()][:3].tolist()}")
    members = list(sets.values()) if isinstance(sets, Mapping) else list(sets)
    rows, cols = [], []
    for s, m in enumerate(members):
        pos = index.get_indexer(pd.Index(list(m)).unique())
        pos = pos[pos >= 0]
        rows.append(np.full(pos.shape[0], s, dtype=np.int64))
        cols.append(pos.astype(np.int64))
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(r.shape[0], dtype=bool), (r, c)), shape=(len(members), len(index)))


def comembership(membership: sp.spmatrix, *, block: int = 1024) -> np.ndarray:
    """bool (n_genes, n_genes): True at (a, b) where genes a and b share at least one set (the
    diagonal: where a gene is in any set).

    ``membership``: (n_sets, n_genes) from :func:`membership_matrix`. The co-occurrence counts
    ``membership.T @ membership`` are made sparse and read ``block`` rows at a time, so memory
    is the boolean result plus one block.
    """
    m = sp.csr_matrix(membership, dtype=np.float32)
    n = m.shape[1]
    counts = (m.T @ m).tocsr()
    out = np.zeros((n, n), dtype=bool)
    for start in range(0, n, block):
        out[start:start + block] = counts[start:start + block].toarray() > 0
    return out


def sample_pairs(n_genes: int, strata_of, *, max_pairs: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``a < b`` of ``n_genes`` genes, or a seeded stratified subset of ``max_pairs``.

    Parameters
    ----------
    n_genes
        Number of evaluated genes.
    strata_of
        Callable ``(a, b) -> int array`` giving each pair's stratum (e.g. 2 x held-out label +
        trained label); the subset keeps each stratum's share of all pairs (proportional
        allocation, largest remainders), so positive rates are those of all pairs.
    max_pairs
        Most pairs to return; None: all.
    seed
        Seed of the draw (numpy ``default_rng``).

    Returns
    -------
    a, b : int64 (n_pairs,)
        The pairs, sorted by (a, b).
    """
    if n_genes < 2:
        raise InputError(f"gene pairs: {n_genes} evaluated gene(s); at least 2 are needed for a pair")
    a, b = np.triu_indices(n_genes, k=1)
    a, b = a.astype(np.int64), b.astype(np.int64)
    if max_pairs is None or a.shape[0] <= max_pairs:
        return a, b
    strata = np.asarray(strata_of(a, b), dtype=np.int64)
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    exact = counts * (max_pairs / a.shape[0])
    take = np.floor(exact).astype(np.int64)
    short = max_pairs - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1  # largest remainders
    rng = np.random.default_rng(seed)
    keep = []
    for k in range(values.shape[0]):
        members = np.flatnonzero(inverse == k)
        keep.append(rng.choice(members, size=int(take[k]), replace=False))
    keep = np.sort(np.concatenate(keep))
    return a[keep], b[keep]


def pair_scores(scores, labels) -> dict[str, float]:
    """AUROC and AUPRC of pair scores against binary labels (scikit-learn).

    Parameters
    ----------
    scores : (n_pairs,) float
        Higher = more related; NaN is an error (score a missing value explicitly).
    labels : (n_pairs,) bool
        True for pairs that share a held-out gene set.

    Returns
    -------
    dict with ``auroc`` (``roc_auc_score``), ``auprc`` (``average_precision_score``), ``n_pairs``,
    ``n_positive``, ``positive_rate`` (the AUPRC of a random score, in expectation). AUROC and
    AUPRC are NaN when the labels are all of one class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InputError(f"pair_scores: scores {scores.shape} and labels {labels.shape} must be equal 1-d shapes")
    if not np.all(np.isfinite(scores)):
        raise InputError(f"pair_scores: {int((~np.isfinite(scores)).sum())} score(s) are not finite")
    n, pos = int(labels.shape[0]), int(labels.sum())
    both = 0 < pos < n
    return {"auroc": float(roc_auc_score(labels, scores)) if both else float("nan"),
            "auprc": float(average_precision_score(labels, scores)) if both else float("nan"),
            "n_pairs": float(n), "n_positive": float(pos), "positive_rate": pos / n if n else float("nan")}


def pair_set_scores(scores, held_out, trained) -> dict[str, dict[str, float]]:
    """:func:`pair_scores` on the two pair sets of the gene-pair table.

    Parameters
    ----------
    scores : (n_pairs,) float
    held_out : (n_pairs,) bool
        The label: the pair shares a held-out gene set.
    trained : (n_pairs,) bool
        The pair shares a set the pathway loss trained on.

    Returns
    -------
    ``{"all": ..., "strict": ...}``: every pair, and the pairs with ``trained`` False only (a pair
    the loss pulled together cannot score there); NaN metrics for an empty set.
    """
    scores = np.asarray(scores, dtype=np.float64)
    held_out, trained = np.asarray(held_out, dtype=bool), np.asarray(trained, dtype=bool)
    if not scores.shape == held_out.shape == trained.shape:
        raise InputError(f"pair_set_scores: scores {scores.shape}, held_out {held_out.shape} and trained "
                         f"{trained.shape} must have one shape")
    empty = {"auroc": float("nan"), "auprc": float("nan"), "n_pairs": 0.0, "n_positive": 0.0,
             "positive_rate": float("nan")}
    out = {}
    for name, sel in (("all", np.ones(scores.shape, bool)), ("strict", ~trained)):
        out[name] = pair_scores(scores[sel], held_out[sel]) if sel.any() else dict(empty)
    return out


def cosine_scores(embeddings, a, b) -> np.ndarray:
    """Cosine similarity of gene pairs.

    ``embeddings``: (n_genes, d); ``a``, ``b``: (n_pairs,) gene positions. Returns float64
    (n_pairs,); a gene whose embedding is all zeros scores 0 with every gene.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    unit = np.divide(e, norm, out=np.zeros_like(e), where=norm > 0)
    return np.einsum("ij,ij->i", unit[np.asarray(a)], unit[np.asarray(b)])


def coexpression_scores(X, a, b, *, groups=None, measured=None, chunk: int = 65536) -> np.ndarray:
    """Pearson correlation of gene pairs over cells, each pair over the cells whose dataset
    measured both genes.

    Hand-written because neither numpy nor scipy correlates chosen pairs with pairwise-complete
    cells: ``np.corrcoef`` of every gene pair needs the full (n_genes, n_genes) matrix and treats
    an unmeasured gene as a zero (DESIGN.md: it is not a zero). Per dataset the per-gene sums and
    the pairs' cross sums are added up over the datasets that measured both genes of a pair, and
    the correlation is computed from the pooled sums (float64).

    Parameters
    ----------
    X : (n_cells, n_genes), dense or sparse
        Log-normalised expression of the evaluated genes.
    a, b : (n_pairs,)
        Gene positions (columns of ``X``).
    groups : (n_cells,) int, optional
        Each cell's dataset (column of ``measured``); default one dataset.
    measured : (n_genes, n_groups) bool, optional
        Which dataset measured which gene; default all.
    chunk
        Pairs per vectorised step (bounds memory: n_cells x chunk values per step).

    Returns
    -------
    float64 (n_pairs,): NaN where fewer than 2 cells measured both genes or a gene is constant there.
    """
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    n_cells, n_genes = X.shape
    groups = np.zeros(n_cells, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if groups.shape != (n_cells,):
        raise InputError(f"coexpression_scores: groups has shape {groups.shape}, expected ({n_cells},)")
    n_groups = int(groups.max()) + 1 if n_cells else 1
    measured = np.ones((n_genes, n_groups), dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    if measured.shape[0] != n_genes or measured.shape[1] < n_groups:
        raise InputError(f"coexpression_scores: measured has shape {measured.shape}, expected ({n_genes}, >= {n_groups})")
    n = np.zeros(a.shape[0])
    sa, sb, saa, sbb, sab = (np.zeros(a.shape[0]) for _ in range(5))
    for g in range(n_groups):
        rows = np.flatnonzero(groups == g)
        if not rows.size:
            continue
        Z = X[rows]
        Z = Z.toarray() if sp.issparse(Z) else Z
        Z = np.asarray(Z, dtype=np.float64)
        s1, s2 = Z.sum(0), (Z * Z).sum(0)
        w = (measured[a, g] & measured[b, g]).astype(np.float64)
        for start in range(0, a.shape[0], chunk):
            i, j = a[start:start + chunk], b[start:start + chunk]
            sl = slice(start, start + i.shape[0])
            sab[sl] += w[sl] * np.einsum("ij,ij->j", Z[:, i], Z[:, j])
        n += w * rows.size
        sa += w * s1[a]
        sb += w * s1[b]
        saa += w * s2[a]
        sbb += w * s2[b]
    cov = n * sab - sa * sb
    var = (n * saa - sa * sa) * (n * sbb - sb * sb)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var)
    r[(n < 2) | ~(var > 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


# ---------------------------------------------------------------- rank reconstruction
def reconstruction_order(predicted) -> np.ndarray:
    """The reconstruction's ranking: the distinct predicted genes in the order of their first
    occurrence (``predicted``: (L,) gene ids, negative = no prediction at that position, skipped)."""
    p = np.asarray(predicted)
    p = p[p >= 0]
    _, first = np.unique(p, return_index=True)
    return p[np.sort(first)]


def topk_overlap(genes, predicted, k: int) -> float:
    """The fraction of the input's top-k genes that are among the reconstruction's top k.

    ``genes``: (L,) the input ranking (distinct gene ids, highest first); ``predicted``: (L,) the
    gene predicted at each position. With fewer than ``k`` input genes, ``k`` is their number.
    """
    genes = np.asarray(genes)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"topk_overlap: k must be an integer >= 1, got {k!r}")
    k = min(int(k), genes.shape[0])
    if k == 0:
        return float("nan")
    top = reconstruction_order(predicted)[:k]
    return float(np.isin(genes[:k], top).sum()) / k


def rank_pairs(genes, predicted) -> tuple[np.ndarray, np.ndarray]:
    """(input rank, reconstructed rank) of each gene present in both rankings, 0 = first.

    The reconstructed rank is the gene's position in :func:`reconstruction_order`. Returns two
    int64 arrays in input order.
    """
    genes = np.asarray(genes)
    order = reconstruction_order(predicted)
    where = pd.Index(order).get_indexer(genes)
    present = where >= 0
    return np.flatnonzero(present).astype(np.int64), where[present].astype(np.int64)


def rank_spearman(genes, predicted) -> float:
    """Spearman correlation (scipy) of input rank and reconstructed rank over the genes present
    in both rankings; NaN with fewer than :data:`MIN_SPEARMAN_GENES` such genes or a constant rank."""
    from scipy.stats import spearmanr

    x, y = rank_pairs(genes, predicted)
    if x.shape[0] < MIN_SPEARMAN_GENES:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def score_reconstruction(inputs: Sequence, predictions: Sequence, *, top_k: Sequence[int] = (10, 50, 100)) -> pd.DataFrame:
    """Per-cell reconstruction metrics.

    Parameters
    ----------
    inputs
        Per cell, (L_c,) the input ranking (gene ids).
    predictions
        Per cell, (L_c,) the gene predicted at each position.
    top_k
        The k of the ``overlap_top<k>`` columns.

    Returns
    -------
    DataFrame (n_cells,): ``n_genes``, ``overlap_top<k>`` per k (:func:`topk_overlap`), ``spearman``
    (:func:`rank_spearman`).
    """
    if len(inputs) != len(predictions):
        raise InputError(f"score_reconstruction: {len(inputs)} input cells but {len(predictions)} predictions")
    rows = []
    for genes, pred in zip(inputs, predictions):
        genes, pred = np.asarray(genes), np.asarray(pred)
        if genes.shape != pred.shape:
            raise InputError(f"score_reconstruction: a cell of {genes.shape[0]} genes has {pred.shape[0]} predictions")
        row = {"n_genes": int(genes.shape[0])}
        row.update({f"overlap_top{k}": topk_overlap(genes, pred, int(k)) for k in top_k})
        row["spearman"] = rank_spearman(genes, pred)
        rows.append(row)
    return pd.DataFrame(rows, columns=["n_genes", *(f"overlap_top{k}" for k in top_k), "spearman"])


def summarize_reconstruction(per_cell: pd.DataFrame) -> dict[str, float]:
    """Means over cells of a :func:`score_reconstruction` frame (NaN cells left out), with
    ``n_cells`` and ``n_cells_spearman`` (cells with a Spearman value)."""
    out = {c: float(per_cell[c].mean()) for c in per_cell.columns if c.startswith("overlap_top")}
    out["spearman"] = float(per_cell["spearman"].mean())
    out["n_cells"] = float(len(per_cell))
    out["n_cells_spearman"] = float(per_cell["spearman"].notna().sum())
    return out

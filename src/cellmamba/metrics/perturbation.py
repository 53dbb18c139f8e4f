"""Perturbation-prediction metrics (DESIGN.md "Metrics"; GEARS' ``compute_metrics`` conventions).

Every metric is computed per perturbation condition on MEAN expression profiles (the mean over
the condition's cells of the prediction and of the measurement), then averaged over
conditions, as GEARS does:

- ``pearson_delta``: Pearson r between predicted and measured change from the control mean,
  ``pred - ctrl`` vs ``truth - ctrl``, over all genes;
- ``pearson_delta_de<N>`` (N = 20 by default): the same over the condition's top-N
  differentially expressed genes (given as an input list per condition, in rank order);
- ``mse`` / ``mse_de<N>``: mean squared error of the mean profiles (equal to the MSE of the
  deltas, the control cancels) over all genes / the top-N DE genes.

Reverse perturbation: :func:`topk_accuracy` scores a ranking of candidate perturbations.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import Scores, as_matrix

__all__ = ["pearson", "perturbation_scores", "summarize_perturbation", "topk_accuracy",
           "reverse_perturbation_scores"]


def pearson(a, b) -> float:
    """Pearson correlation of two 1-D vectors; NaN when either is constant."""
    a = as_matrix(a, name="a", ndim=1)
    b = as_matrix(b, name="b", ndim=1)
    if a.shape != b.shape:
        raise InputError(f"pearson: vectors of different lengths {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _frame(x, *, name: str, genes=None) -> pd.DataFrame:
    if not isinstance(x, pd.DataFrame):
        raise InputError(f"{name}: expected a DataFrame (conditions x genes), got {type(x).__name__}")
    if not x.index.is_unique or not x.columns.is_unique:
        raise InputError(f"{name}: condition index and gene columns must be unique")
    if genes is not None:
        missing = pd.Index(genes).difference(x.columns)
        if len(missing):
            raise InputError(f"{name}: {len(missing)} genes are missing (e.g. {list(missing[:3])})")
        x = x.loc[:, genes]
    as_matrix(x.to_numpy(), name=name)
    return x


def perturbation_scores(pred: pd.DataFrame, truth: pd.DataFrame, ctrl_mean, *,
                        de_genes: Mapping[str, Sequence[str]] | None = None, n_de: int = 20) -> pd.DataFrame:
    """Per-condition Pearson delta and MSE, on all genes and on the top ``n_de`` DE genes.

    Parameters
    ----------
    pred, truth
        (n_conditions, n_genes) mean predicted / measured expression of each condition; index =
        condition names, columns = gene names. ``pred`` must cover ``truth``'s conditions and genes.
    ctrl_mean
        (n_genes,) mean expression of the control cells: a Series indexed by gene, or an array
        in ``truth``'s column order.
    de_genes
        Condition -> its DE genes ranked most to least differential; the first ``n_de`` are used
        (fewer when fewer are given). None leaves the ``*_de`` columns NaN.
    n_de
        How many top DE genes.

    Returns
    -------
    pandas.DataFrame
        Index = ``truth``'s conditions; columns ``pearson_delta``, ``pearson_delta_de<n_de>``,
        ``mse``, ``mse_de<n_de>``.
    """
    truth = _frame(truth, name="truth")
    genes = truth.columns
    missing = truth.index.difference(pred.index) if isinstance(pred, pd.DataFrame) else None
    if missing is not None and len(missing):
        raise InputError(f"pred: conditions {list(missing[:5])} of truth are missing")
    pred = _frame(pred, name="pred", genes=genes).loc[truth.index]
    if isinstance(ctrl_mean, pd.Series):
        absent = genes.difference(ctrl_mean.index)
        if len(absent):
            raise InputError(f"ctrl_mean: {len(absent)} genes are missing (e.g. {list(absent[:3])})")
        ctrl = as_matrix(ctrl_mean.loc[genes].to_numpy(), name="ctrl_mean", ndim=1)
    else:
        ctrl = as_matrix(ctrl_mean, name="ctrl_mean", ndim=1)
        if ctrl.shape[0] != len(genes):
            raise InputError(f"ctrl_mean: {ctrl.shape[0]} values for {len(genes)} genes")
    position = pd.Series(np.arange(len(genes)), index=genes)
    de_name, mse_de_name = f"pearson_delta_de{n_de}", f"mse_de{n_de}"
    rows = []
    P, T = pred.to_numpy(np.float64), truth.to_numpy(np.float64)
    for i, cond in enumerate(truth.index):
        dp, dt = P[i] - ctrl, T[i] - ctrl
        row = {"pearson_delta": pearson(dp, dt), de_name: np.nan,
               "mse": float(np.mean((P[i] - T[i]) ** 2)), mse_de_name: np.nan}
        if de_genes is not None:
            if cond not in de_genes:
                raise InputError(f"de_genes: no DE gene list for condition {cond!r}")
            top = list(de_genes[cond])[:n_de]
            absent = [g for g in top if g not in position.index]
            if absent or not top:
                raise InputError(f"de_genes[{cond!r}]: " + (f"genes {absent[:3]} are not measured" if absent
                                                           else "empty list"))
            idx = position.loc[top].to_numpy()
            row[de_name] = pearson(dp[idx], dt[idx])
            row[mse_de_name] = float(np.mean((P[i, idx] - T[i, idx]) ** 2))
        rows.append(row)
    return pd.DataFrame(rows, index=truth.index)


def summarize_perturbation(per_condition: pd.DataFrame, *, groups: Mapping[str, str] | None = None) -> Scores:
    """Mean of each per-condition metric over conditions, overall and per group.

    Parameters
    ----------
    per_condition
        Output of :func:`perturbation_scores`.
    groups
        Condition -> split name (e.g. ``unseen_single``, ``combo_seen0``, ``combo_seen1``,
        ``combo_seen2``); adds ``<metric>_<group>`` means. Conditions without a group count
        only in the overall mean.

    Returns
    -------
    Scores
        ``<metric>`` and ``<metric>_<group>``; NaN conditions (constant deltas) are left out of
        the means and counted in ``.notes``.
    """
    scores = Scores()

    def add(frame, suffix):
        for col in frame.columns:
            vals = frame[col].to_numpy(np.float64)
            name = f"{col}{suffix}"
            ok = np.isfinite(vals)
            scores[name] = float(vals[ok].mean()) if ok.any() else float("nan")
            if (~ok).any() and ok.any():
                scores.notes[name] = f"{int((~ok).sum())} of {len(vals)} conditions undefined (constant profile)"
            elif not ok.any():
                scores.notes[name] = "undefined for every condition"

    add(per_condition, "")
    if groups is not None:
        labels = pd.Series(groups).reindex(per_condition.index)
        for group in sorted(labels.dropna().unique()):
            add(per_condition.loc[labels.to_numpy() == group], f"_{group}")
    return scores


def topk_accuracy(scores, truth, *, k: int = 1, candidates: Sequence[str] | None = None) -> float:
    """Fraction of queries whose true perturbation ranks among the top ``k`` candidates.

    Parameters
    ----------
    scores
        (n_queries, n_candidates) scores, higher = more likely.
    truth
        (n_queries,) the true candidate of each query: column indices, or labels when
        ``candidates`` names the columns.
    k
        Cut-off.
    candidates
        (n_candidates,) column labels (e.g. ``"CBL+CNN1"``).

    Returns
    -------
    float
        Hit rate. Ties count against the truth: its rank is the number of OTHER candidates
        scoring greater than or equal to it, and a hit is rank < k (so constant scores never
        hit unless k covers all candidates).
    """
    S = as_matrix(scores, name="scores")
    if candidates is not None:
        if len(candidates) != S.shape[1]:
            raise InputError(f"candidates: {len(candidates)} labels for {S.shape[1]} score columns")
        pos = {c: i for i, c in enumerate(candidates)}
        unknown = [t for t in truth if t not in pos]
        if unknown:
            raise InputError(f"truth: {unknown[:3]} are not among the candidates")
        idx = np.array([pos[t] for t in truth], dtype=np.int64)
    else:
        idx = np.asarray(truth, dtype=np.int64)
    if idx.shape != (S.shape[0],):
        raise InputError(f"truth: {idx.shape[0] if idx.ndim else 1} entries for {S.shape[0]} queries")
    if ((idx < 0) | (idx >= S.shape[1])).any():
        raise InputError(f"truth: indices must lie in [0, {S.shape[1]})")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    true_score = S[np.arange(S.shape[0]), idx]
    rank = (S >= true_score[:, None]).sum(axis=1) - 1
    return float(np.mean(rank < k))


def reverse_perturbation_scores(scores, truth, *, ks: Sequence[int] = (1, 5, 10),
                                candidates: Sequence[str] | None = None) -> Scores:
    """``top<k>_accuracy`` of :func:`topk_accuracy` for each ``k`` in ``ks``."""
    return Scores({f"top{k}_accuracy": topk_accuracy(scores, truth, k=k, candidates=candidates) for k in ks})

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

Reverse perturbation (:func:`reverse_perturbation_topk`): each query is the measured mean
profile of a test combo; candidates (every single and pair of a gene grid) are ranked by the L2
distance between that profile and their PREDICTED mean profile; top-k accuracy, k = 1..8, of the
exact pair ("2/2") and of at least one of its genes ("1/2"), as scGPT Fig. 3F-G / SC-MAMBA2
report. scGPT ranks by votes of per-cell nearest neighbours (faiss IndexFlatL2 over 30
predicted cells per candidate); ranking mean profiles is our documented simplification.
:func:`topk_accuracy` scores any other ranking of candidate perturbations.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..conditions import CTRL, de_gene_lists, gene_set
from ..errors import InputError
from ..keys import OBS_CONDITION, UNS, UNS_SIMULATED
from ._common import Scores, as_matrix

__all__ = ["pearson", "perturbation_scores", "summarize_perturbation", "topk_accuracy",
           "reverse_perturbation_scores", "reverse_perturbation_topk", "REVERSE_KS", "condition_profiles",
           "de_gene_lists", "score_perturbation_files", "perturbation_frame", "REVERSE_MATCH", "write_deltas",
           "read_deltas", "DELTAS_MEASURED"]

log = logging.getLogger(__name__)

#: reverse perturbation cut-offs (scGPT / SC-MAMBA2: k = 1..8)
REVERSE_KS = tuple(range(1, 9))


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
        ``mse``, ``mse_de<n_de>``. A constant predicted change (e.g. the no-change baseline, or
        the additive model for unseen genes) has Pearson 0, as in GEARS; a constant measured
        change leaves it NaN.
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
    def r(dp, dt):
        # GEARS (inference.deeper_analysis) sets an undefined correlation to 0; we do so only when
        # the PREDICTED change is constant (a no-change prediction carries no information), and
        # keep NaN when the measured change is constant (nothing to correlate with)
        if np.ptp(dp) == 0 and np.ptp(dt) > 0:
            return 0.0
        return pearson(dp, dt)

    for i, cond in enumerate(truth.index):
        dp, dt = P[i] - ctrl, T[i] - ctrl
        row = {"pearson_delta": r(dp, dt), de_name: np.nan,
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
            row[de_name] = r(dp[idx], dt[idx])
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


def reverse_perturbation_topk(observed: pd.DataFrame, predicted: pd.DataFrame, *,
                              ks: Sequence[int] = REVERSE_KS) -> pd.DataFrame:
    """Top-k retrieval of the perturbation behind each observed profile.

    Parameters
    ----------
    observed
        (n_queries, n_genes) measured mean profile of each query condition (index: GEARS
        condition strings, e.g. ``"A+B"``; either gene order).
    predicted
        (n_candidates, n_genes) predicted mean profile of each candidate condition (index:
        condition strings); must include every query's perturbation and ``observed``'s genes.
    ks
        Cut-offs.

    Returns
    -------
    pandas.DataFrame
        Index ``k``; columns ``exact`` (fraction of queries whose own perturbation, genes in
        any order, is among the k nearest candidates: "2/2") and ``partial`` (at least one of
        its genes is perturbed by one of the k nearest: "1/2"). Ties count against: a
        candidate is among the k nearest only if fewer than k other candidates are at most
        as far (constant predictions therefore never hit unless k covers all candidates).
    """
    obs = _frame(observed, name="observed")
    pred = _frame(predicted, name="predicted", genes=obs.columns)
    if len(obs) == 0:
        raise InputError("reverse perturbation: no query conditions")
    cand_genes = [gene_set(c) for c in pred.index]
    if len(set(cand_genes)) != len(cand_genes):
        raise InputError("predicted: two candidates perturb the same genes")
    pos = {g: i for i, g in enumerate(cand_genes)}
    truth = []
    for q in obs.index:
        genes = gene_set(q)
        if genes not in pos:
            raise InputError(f"reverse perturbation: query {q!r} is not among the {len(pred)} candidates")
        truth.append(pos[genes])
    # distance of every query to every candidate; the direct formula (no |a|^2 - 2ab shortcut)
    from scipy.spatial.distance import cdist

    D = cdist(obs.to_numpy(np.float64), pred.to_numpy(np.float64))
    # rank of candidate j for query i = #{other candidates at distance <= D[i, j]}
    ranks = (D[:, None, :] <= D[:, :, None]).sum(axis=2) - 1
    truth = np.asarray(truth)
    shares = np.array([[bool(cand_genes[t] & g) for g in cand_genes] for t in truth])
    rows = []
    for k in ks:
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        near = ranks < k
        rows.append({"k": int(k), "exact": float(np.mean(near[np.arange(len(truth)), truth])),
                     "partial": float(np.mean((near & shares).any(axis=1)))})
    return pd.DataFrame(rows).set_index("k")


def condition_profiles(X, conditions, wanted: Sequence[str]) -> pd.DataFrame:
    """Mean expression of the cells of each wanted condition: (len(wanted), n_genes) array
    as a DataFrame indexed by condition (columns: gene positions; the caller names them)."""
    import scipy.sparse as sp

    conditions = np.asarray(conditions).astype(str)
    rows = []
    for c in wanted:
        idx = np.flatnonzero(conditions == c)
        if len(idx) == 0:
            raise InputError(f"condition {c!r} has no cells")
        block = X[idx]
        rows.append(np.asarray(block.mean(axis=0)).ravel() if sp.issparse(block) else block.mean(axis=0))
    return pd.DataFrame(np.vstack(rows).astype(np.float64) if rows else np.zeros((0, X.shape[1])),
                        index=pd.Index(list(wanted)))


#: layer of a deltas file holding the measured change (X holds the predicted one)
DELTAS_MEASURED = "measured"
_DE_COLUMN = "de_genes"


def write_deltas(predicted: pd.DataFrame, measured: pd.DataFrame, out: str | os.PathLike, *,
                 per_condition: pd.DataFrame, de_genes: Mapping[str, Sequence[str]],
                 info: Mapping | None = None) -> None:
    """Write one method's per-gene changes from the control mean (the scoring's intermediate).

    Parameters
    ----------
    predicted, measured
        (n_conditions, n_genes) prediction - control mean and condition mean - control mean
        (index: test conditions, columns: genes; the same labels in both).
    per_condition
        One row per condition (same index): ``subgroup`` and the metrics of
        :func:`perturbation_scores`, stored as obs columns.
    de_genes
        condition -> its top DE genes in rank order (stored as a JSON list in obs ``de_genes``).
    out
        h5ad: X float32 = ``predicted``, layers[``measured``] float32, obs = ``per_condition``
        plus ``de_genes``, var_names = genes, uns['cellmamba'] = ``info`` (dataset, n_de, simulated).
    """
    import anndata as ad

    from ..io import write_h5ad_atomic

    if not (predicted.index.equals(measured.index) and predicted.columns.equals(measured.columns)
            and predicted.index.equals(per_condition.index)):
        raise InputError(f"{out}: predicted, measured and per_condition must share conditions and genes")
    obs = per_condition.copy()
    obs.index = obs.index.astype(str)
    obs[_DE_COLUMN] = [json.dumps([str(g) for g in de_genes[c]]) for c in per_condition.index]
    a = ad.AnnData(X=predicted.to_numpy(np.float32), obs=obs, var=pd.DataFrame(index=predicted.columns.astype(str)),
                   layers={DELTAS_MEASURED: measured.to_numpy(np.float32)})
    a.uns[UNS] = dict(info or {})
    write_h5ad_atomic(a, out)


def read_deltas(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Inverse of :func:`write_deltas` as a long frame.

    Returns
    -------
    data : DataFrame
        One row per condition x gene, conditions in the file's order: ``condition``, ``subgroup``,
        ``gene``, ``measured``, ``predicted``, ``de`` (bool: among the condition's DE genes) and
        the per-condition metric columns (``pearson_delta``, ``pearson_delta_de<n>``, ...).
    info : dict
        uns['cellmamba'] (``dataset``, ``n_de``, ``simulated``).
    """
    from ..io import read_h5ad_plain

    a = read_h5ad_plain(path, "a perturbation deltas h5ad (X = predicted change, layers['measured'])")
    if DELTAS_MEASURED not in a.layers or _DE_COLUMN not in a.obs:
        raise InputError(f"{path}: expected layers['{DELTAS_MEASURED}'] and obs['{_DE_COLUMN}'] (a deltas file of "
                         "score_perturbation)")
    genes = pd.Index(a.var_names.astype(str))
    X, M = np.asarray(a.X, dtype=np.float64), np.asarray(a.layers[DELTAS_MEASURED], dtype=np.float64)
    frames = []
    for i, c in enumerate(a.obs_names.astype(str)):
        row = a.obs.iloc[i]
        frame = pd.DataFrame({"condition": c, "subgroup": str(row.get("subgroup", "")), "gene": genes,
                              "measured": M[i], "predicted": X[i], "de": genes.isin(json.loads(row[_DE_COLUMN]))})
        for col in a.obs.columns:
            if col not in ("subgroup", _DE_COLUMN):
                frame[col] = row[col]
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return data, dict(a.uns.get(UNS, {}))


def score_perturbation_files(dataset: str | os.PathLike, split: str | os.PathLike,
                             predictions: str | os.PathLike, *, n_de: int = 20, ks: Sequence[int] = REVERSE_KS,
                             deltas: str | os.PathLike | None = None) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """Score one method's predictions against a perturbation dataset's test conditions.

    Parameters
    ----------
    dataset
        Standard-schema perturbation h5ad (obs ``condition``; X = log1p expression as
        published, the space every method predicts in).
    split
        The split JSON (:func:`cellmamba.datasets.gears_split.read_split`): test conditions,
        their subgroups, the reverse-perturbation grid.
    predictions
        Profiles h5ad (:func:`cellmamba.io.write_profiles`): predicted mean profile of every
        test condition and every reverse candidate, genes = the dataset's var_names.
    deltas
        Where to write the per-gene changes from the control mean that the scores correlate
        (:func:`write_deltas`; the perturbation scatter draws them); None writes nothing.

    Returns
    -------
    per_condition : DataFrame
        One row per test condition: ``subgroup``, ``pearson_delta``, ``pearson_delta_de<n>``,
        ``mse``, ``mse_de<n>``.
    summary : dict
        subgroup name (``all`` first) -> :class:`Scores` (means over its conditions, plus
        ``n_conditions``).
    reverse : DataFrame or None
        :func:`reverse_perturbation_topk` on the split's queries, or None without queries.
    """
    from ..datasets.gears_split import read_split
    from ..io import read_h5ad_checked, read_profiles

    adata = read_h5ad_checked(dataset)
    sp_ = read_split(split)
    pred, _, _ = read_profiles(predictions)
    genes = pd.Index(adata.var_names.astype(str))
    if not genes.equals(pd.Index(pred.columns)):
        raise InputError(f"{predictions}: genes differ from {dataset}'s var_names ({pred.shape[1]} vs {len(genes)})")
    conditions = adata.obs[OBS_CONDITION].astype(str).to_numpy()
    X = adata.X
    ctrl = condition_profiles(X, conditions, [CTRL]).iloc[0].to_numpy()
    test = [c for c in sp_.test if c != CTRL]
    truth = condition_profiles(X, conditions, test)
    truth.columns = genes
    key = {gene_set(c): c for c in pred.index}
    missing = [c for c in test if gene_set(c) not in key]
    if missing:
        raise InputError(f"{predictions}: no prediction for test conditions {missing[:5]}")
    pred_test = pred.loc[[key[gene_set(c)] for c in test]]
    pred_test.index = truth.index
    de = de_gene_lists(adata, test, n_de=n_de)
    per = perturbation_scores(pred_test, truth, ctrl, de_genes=de, n_de=n_de)
    groups = {c: g for g, conds in sp_.test_subgroup.items() for c in conds}
    per.insert(0, "subgroup", [groups.get(c, "") for c in per.index])
    if deltas is not None:
        write_deltas(pred_test - ctrl, truth - ctrl, deltas, per_condition=per, de_genes=de,
                     info={"dataset": Path(dataset).stem, "n_de": int(n_de),
                           "simulated": bool(dict(adata.uns.get(UNS, {})).get(UNS_SIMULATED, False))})
    summary = {}
    for name, block in [("all", per)] + [(g, per[per["subgroup"] == g]) for g in sorted(sp_.test_subgroup)]:
        scores = summarize_perturbation(block.drop(columns="subgroup")) if len(block) else Scores(
            {c: float("nan") for c in per.columns if c != "subgroup"})
        if not len(block):
            for c in list(scores):
                scores.notes[c] = f"no test condition in subgroup {name}"
        scores["n_conditions"] = float(len(block))
        summary[name] = scores
    reverse = None
    queries = list(sp_.reverse_queries)
    if queries:
        cands = [key.get(gene_set(c)) for c in sp_.reverse_candidates]
        absent = [c for c, k in zip(sp_.reverse_candidates, cands) if k is None]
        if absent:
            raise InputError(f"{predictions}: no prediction for reverse candidates {absent[:5]}")
        observed = condition_profiles(X, conditions, queries)
        observed.columns = genes
        reverse = reverse_perturbation_topk(observed, pred.loc[cands], ks=ks)
        reverse.attrs["n_queries"] = len(queries)
        reverse.attrs["n_candidates"] = len(cands)
    else:
        log.warning("%s: the split has no reverse-perturbation queries", split)
    return per, summary, reverse


#: reverse-perturbation row names of the table (column of :func:`reverse_perturbation_topk` -> flag)
REVERSE_MATCH = {"exact": "2/2 genes", "partial": ">=1/2 genes"}


def perturbation_frame(summary: Mapping[str, Scores], reverse: pd.DataFrame | None, *, dataset: str, method: str,
                       seed: int, extra: Mapping[str, object] | None = None) -> pd.DataFrame:
    """The long metric frame of one perturbation run (see :mod:`cellmamba.metrics.tables`).

    Rows of task ``perturbation`` carry the flag ``subgroup`` (``all``, ``unseen_single``,
    ``combo_seen0`` ...); rows of task ``reverse_perturbation`` carry ``match`` (2/2 or >=1/2
    genes) with metrics ``top1`` ... ``top8`` and ``n_queries``.
    """
    from .rows import metrics_frame

    frames = [metrics_frame(scores, task="perturbation", dataset=dataset, method=method, seed=seed,
                            extra={**dict(extra or {}), "subgroup": name}) for name, scores in summary.items()]
    if reverse is not None:
        for column, match in REVERSE_MATCH.items():
            scores = Scores({f"top{k}": float(v) for k, v in reverse[column].items()})
            scores["n_queries"] = float(reverse.attrs.get("n_queries", np.nan))
            frames.append(metrics_frame(scores, task="reverse_perturbation", dataset=dataset, method=method,
                                        seed=seed, extra={**dict(extra or {}), "match": match}))
    return pd.concat(frames, ignore_index=True)


#: metric -> direction (:mod:`.rows`); ``pearson_delta*`` / ``mse*``: also ``_de<N>`` and ``_<subgroup>``
METRICS = {"pearson_delta*": "higher", "mse*": "lower", **dict.fromkeys((f"top{k}" for k in REVERSE_KS), "higher"),
           **dict.fromkeys(("n_conditions", "n_queries", "n_candidates"), "unranked")}

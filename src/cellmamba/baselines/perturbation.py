"""Perturbation baselines (issue 6): no change, mean of training perturbations, additive model.

Conditions are GEARS strings (DATASETS.md §5): ``ctrl``; singles ``A+ctrl`` or ``ctrl+A`` (both
orders occur in Norman and mean the same perturbation); combos ``A+B`` (``B+A`` is the same
combo). All means are of log-normalised expression, gene by gene.

- ``no_change``: the control mean (every cell whose condition is ``ctrl``; control cells are the
  models' inputs at test time too, so all of them are used whether or not ``ctrl`` is listed in
  ``train_conditions``).
- ``train_mean``: the mean, over the training perturbations (``ctrl`` excluded, each
  perturbation once whatever the order of its genes), of each perturbation's mean profile.
- ``additive``: control mean + the sum, over the condition's genes, of that gene's single effect
  (mean of the training cells of its single perturbation, either order, minus the control mean).
  Rule for a gene without a training single (an unseen single, or a combo with 0 or 1 seen
  genes): its effect is taken as zero, i.e. only the seen singles' effects are added; this is
  never silent: :func:`additive_flags` lists those genes per condition and
  :func:`perturbation_baseline` logs a warning naming them.

``CTRL`` and ``condition_genes`` live in :mod:`cellmamba.conditions`; they are re-exported here.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from ..conditions import CTRL, canonical_condition, condition_genes, prediction_targets
from ..datasets.gears_split import read_split
from ..errors import InputError
from ..keys import OBS_ROLE

__all__ = ["PERTURBATION_METHODS", "CTRL", "condition_genes", "additive_flags", "perturbation_baseline",
           "prediction_targets", "run_perturbation_baseline", "OBS_ROLE"]


log = logging.getLogger(__name__)

PERTURBATION_METHODS = ("no_change", "train_mean", "additive")


def additive_flags(train_conditions: Iterable[str], predict_conditions: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Genes of each condition whose single-gene effect the additive model does not know.

    Parameters
    ----------
    train_conditions
        Conditions whose cells may be used (singles define the effects).
    predict_conditions
        Conditions to predict.

    Returns
    -------
    condition -> sorted tuple of its genes with no training single (empty when the additive
    prediction is complete: ctrl, seen singles, combos with both singles seen).
    """
    seen = {condition_genes(c)[0] for c in train_conditions if len(condition_genes(c)) == 1}
    return {c: tuple(g for g in condition_genes(c) if g not in seen) for c in predict_conditions}


def _group_means(X, canon: np.ndarray, keys: Sequence[tuple[str, ...]]) -> dict:
    """Mean expression (n_genes,) float64 of the cells whose canonical condition is each key."""
    out = {}
    for key in keys:
        rows = np.flatnonzero(canon == ("+".join(key) if key else CTRL))
        out[key] = np.asarray(X[rows].mean(axis=0, dtype=np.float64), dtype=np.float64).ravel()
    return out


def perturbation_baseline(X, conditions: Sequence[str], *, method: str, train_conditions: Iterable[str],
                          predict_conditions: Iterable[str]) -> dict[str, np.ndarray]:
    """Predict the mean expression profile of each condition with a baseline.

    Parameters
    ----------
    X
        (n_cells, n_genes) log-normalised expression, dense or sparse.
    conditions
        (n_cells,) GEARS condition of each cell (obs ``condition``); must include ``ctrl`` cells.
    method
        ``"no_change"``, ``"train_mean"`` or ``"additive"`` (see the module docstring).
    train_conditions
        Conditions whose cells the baseline may use; each must have cells in ``conditions``.
    predict_conditions
        Conditions to predict (need no cells).

    Returns
    -------
    condition (as given in ``predict_conditions``) -> float64 (n_genes,) predicted mean
    expression. For ``additive``, conditions with genes lacking a training single are listed
    by :func:`additive_flags` and logged as a warning.
    """
    if method not in PERTURBATION_METHODS:
        raise InputError(f"perturbation baseline: method is {method!r}; expected one of {list(PERTURBATION_METHODS)}")
    conditions = np.asarray(conditions).astype(str)
    if X.shape[0] != len(conditions):
        raise InputError(f"perturbation baseline: X has {X.shape[0]} rows but conditions has {len(conditions)} entries")
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    train = list(dict.fromkeys(str(c) for c in train_conditions))
    predict = list(dict.fromkeys(str(c) for c in predict_conditions))
    # canonical id of every cell's condition (validates the strings)
    lookup = {c: canonical_condition(c) for c in np.unique(conditions)}
    canon = np.array([lookup[c] for c in conditions], dtype=object)
    for c in predict:
        condition_genes(c)
    present = set(canon)
    missing = sorted({c for c in train if canonical_condition(c) not in present})
    if missing:
        raise InputError(f"perturbation baseline: train_conditions {missing} have no cells in conditions")
    if CTRL not in present:
        raise InputError("perturbation baseline: no cell has condition 'ctrl'; the control mean is required")
    train_keys = list(dict.fromkeys(condition_genes(c) for c in train))
    ctrl = _group_means(X, canon, [()])[()]

    if method == "no_change":
        return {c: ctrl.copy() for c in predict}
    if method == "train_mean":
        perts = [k for k in train_keys if k]
        if not perts:
            raise InputError("perturbation baseline 'train_mean': train_conditions hold no perturbation (only ctrl)")
        means = _group_means(X, canon, perts)
        mean = np.mean(np.stack([means[k] for k in perts]), axis=0)
        log.info("train_mean: mean of %d training perturbations' mean profiles", len(perts))
        return {c: mean.copy() for c in predict}

    singles = [k for k in train_keys if len(k) == 1]
    effects = {k[0]: m - ctrl for k, m in _group_means(X, canon, singles).items()}
    flags = additive_flags(train, predict)
    incomplete = {c: g for c, g in flags.items() if g}
    if incomplete:
        log.warning("additive: %d of %d conditions have genes without a training single; their effect is taken as "
                    "zero (seen singles only): %s", len(incomplete), len(predict),
                    "; ".join(f"{c}: {','.join(g)}" for c, g in sorted(incomplete.items())))
    out = {}
    for c in predict:
        pred = ctrl.copy()
        for g in condition_genes(c):
            if g in effects:
                pred = pred + effects[g]
        out[c] = pred
    return out


def run_perturbation_baseline(dataset, split, out, *, method: str, seed: int = 0) -> None:
    """File-level baseline run (rule baseline_perturbation).

    Parameters
    ----------
    dataset
        Standard-schema perturbation h5ad (obs ``condition``, X = log1p expression as published).
    split
        Split JSON (:func:`cellmamba.datasets.gears_split.read_split`); the baseline learns from
        the ``train`` conditions only (``ctrl`` included), as the models do.
    out
        Profiles h5ad (:func:`cellmamba.io.write_profiles`): one predicted mean profile per
        :func:`prediction_targets` condition, obs ``role``; uns records the method, seed and
        (additive) the genes without a training single.
    seed
        Recorded only: the three baselines are deterministic.
    """
    import pandas as pd

    from ..io import read_h5ad_checked, write_profiles
    from ..keys import OBS_CONDITION

    adata = read_h5ad_checked(dataset)
    sp_ = read_split(split)
    if OBS_CONDITION not in adata.obs:
        raise InputError(f"{dataset}: obs['{OBS_CONDITION}'] (perturbation conditions) is missing")
    conditions, roles = prediction_targets(sp_)
    pred = perturbation_baseline(adata.X, adata.obs[OBS_CONDITION].astype(str).to_numpy(), method=method,
                                 train_conditions=sp_.train, predict_conditions=conditions)
    frame = pd.DataFrame(np.vstack([pred[c] for c in conditions]), index=pd.Index(conditions),
                         columns=adata.var_names.astype(str))
    info = {"method": method, "seed": int(seed), "n_train_conditions": len(sp_.train)}
    if method == "additive":
        info["genes_without_training_single"] = {c: list(g) for c, g in
                                                 additive_flags(sp_.train, conditions).items() if g}
    write_profiles(frame, out, obs=pd.DataFrame({OBS_ROLE: roles}, index=frame.index), info=info)
    log.info("%s: %d conditions predicted (%d test) -> %s", method, len(conditions), roles.count("test"), out)

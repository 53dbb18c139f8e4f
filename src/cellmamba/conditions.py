"""Perturbation conditions as GEARS spells them, in one place (DATASETS.md §5).

``ctrl`` is the control; singles are ``A+ctrl`` or ``ctrl+A`` (both orders occur in Norman and
mean the same perturbation); combos are ``A+B`` (``B+A`` is the same combo). This module holds
the spelling (:data:`CTRL`), the parsing and validation of a condition string, and GEARS' lists
of differentially expressed genes per condition. It sits below ``datasets/``, ``baselines/``,
``metrics/``, ``tasks/`` and ``plots/``, which all import it; it imports nothing of theirs.
"""
from __future__ import annotations

import logging
import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["CTRL", "prediction_targets", "condition_genes", "canonical_condition", "gene_set", "invalid_conditions", "gears_de_genes",
           "de_gene_lists", "UNS_DE_GENES", "OBS_CONDITION_NAME"]

log = logging.getLogger(__name__)

#: the control condition
CTRL = "ctrl"
#: uns key of GEARS' ranked DE genes (condition_name -> every gene ranked vs the control)
UNS_DE_GENES = "rank_genes_groups_cov_all"
#: obs column of GEARS' condition names (``{cell_type}_{condition}_{dose}``), the keys of UNS_DE_GENES
OBS_CONDITION_NAME = "condition_name"


def condition_genes(condition: str) -> tuple[str, ...]:
    """The perturbed genes of a GEARS condition, sorted: ``"ctrl"`` -> (), ``"ctrl+B"`` ->
    ("B",), ``"B+A"`` -> ("A", "B"). A malformed string is an InputError."""
    parts = str(condition).split("+")
    if condition == CTRL:
        return ()
    genes = [p for p in parts if p != CTRL]
    if len(parts) != 2 or not genes or any(not g.strip() or g != g.strip() for g in genes) or \
            (len(genes) == 2 and genes[0] == genes[1]):
        raise InputError(f"perturbation condition {condition!r}: expected 'ctrl', 'A+ctrl', 'ctrl+A' or 'A+B' "
                         "with two different gene names")
    return tuple(sorted(genes))


def canonical_condition(condition: str) -> str:
    """One spelling per perturbation: sorted genes joined by '+' (``"ctrl+B"`` -> ``"B"``,
    ``"B+A"`` -> ``"A+B"``), or ``"ctrl"``."""
    genes = condition_genes(condition)
    return "+".join(genes) if genes else CTRL


def gene_set(condition: str) -> frozenset:
    """The perturbed genes of ``condition`` as a set: ``A+B`` and ``B+A`` give the same key."""
    return frozenset(condition_genes(condition))


def invalid_conditions(conditions: Iterable[str]) -> list[str]:
    """The distinct values of ``conditions`` that :func:`condition_genes` refuses, in order of
    first appearance ([] when all are valid)."""
    bad = []
    for cond in pd.unique(np.asarray(list(conditions), dtype=object).astype(str)):
        try:
            condition_genes(cond)
        except InputError:
            bad.append(str(cond))
    return bad


# --------------------------------------------------------------------------- DE genes
def gears_de_genes(adata, *, ctrl_name: str) -> dict:
    """``uns["rank_genes_groups_cov_all"]`` as GEARS' ``get_DE_genes`` builds it (one cell type).

    Parameters
    ----------
    adata
        (n_cells, n_genes) with log-expression X and obs ``condition_name`` (categorical).
    ctrl_name
        The control's condition_name (``{cell_type}_ctrl_1``): the reference, given no key.

    Returns
    -------
    condition_name -> (n_genes,) str array of var names ranked by |t-test score| vs ctrl.
    """
    import anndata as ad
    import scanpy as sc

    # a bare copy so scanpy's own uns["rank_genes_groups"] does not land in the output
    tmp = ad.AnnData(X=adata.X, obs=adata.obs[[OBS_CONDITION_NAME]].copy(), var=pd.DataFrame(index=adata.var_names))
    with warnings.catch_warnings():  # scanpy fills its result frame column by column (pandas PerformanceWarning)
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(tmp, groupby=OBS_CONDITION_NAME, reference=ctrl_name, rankby_abs=True,
                                n_genes=tmp.n_vars, use_raw=False)
    names = pd.DataFrame(tmp.uns["rank_genes_groups"]["names"])
    return {str(group): names[group].to_numpy().astype(str) for group in names.columns}


def de_gene_lists(adata, conditions: Sequence[str], *, n_de: int = 20, condition_key: str = "condition",
                  name_key: str = OBS_CONDITION_NAME, uns_key: str = UNS_DE_GENES) -> dict:
    """Top ``n_de`` DE genes of each condition, as GEARS defines them.

    GEARS' files carry ``uns['rank_genes_groups_cov_all']`` (condition_name -> every gene
    ranked by scanpy's rank_genes_groups against the control, rankby_abs) and obs
    ``condition_name``; those lists are used as published. Data without them get the same
    computation here (t-test, reference = ctrl, rankby_abs=True), logged.

    Returns
    -------
    condition -> list of its ``n_de`` top genes (var names), in rank order.
    """
    obs = adata.obs
    ranked = adata.uns.get(uns_key)
    if ranked is not None and name_key in obs:
        names = obs.groupby(obs[condition_key].astype(str), observed=True)[name_key].first().astype(str)
        out = {}
        for c in conditions:
            name = names.get(c)
            if name is None or name not in ranked:
                raise InputError(f"uns['{uns_key}'] has no DE list for condition {c!r} (condition_name {name!r})")
            out[c] = [str(g) for g in np.asarray(ranked[name])[:n_de]]
        return out
    import anndata as ad

    log.info("no uns['%s']: ranking DE genes with GEARS' get_DE_genes computation (t-test vs ctrl, rankby_abs)",
             uns_key)
    # the condition itself is the group name (GEARS' condition_name adds cell type and dose)
    work = ad.AnnData(X=adata.X, obs=pd.DataFrame({OBS_CONDITION_NAME: pd.Categorical(obs[condition_key].astype(str))},
                                                  index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    ranked = gears_de_genes(work, ctrl_name=CTRL)
    return {c: [str(g) for g in ranked[c][:n_de]] for c in conditions}


def prediction_targets(split) -> tuple[list[str], list[str]]:
    """What every perturbation method predicts: the split's test conditions (as spelled in the
    data, ``ctrl`` excluded), then the reverse-perturbation candidates that perturb other gene
    sets than those (canonical spelling).

    Returns
    -------
    conditions, roles
        Equal-length lists; roles are ``"test"`` or ``"reverse_candidate"``.
    """
    conditions = [c for c in split.test if c != CTRL]
    seen = {condition_genes(c) for c in conditions}
    roles = ["test"] * len(conditions)
    for c in split.reverse_candidates:
        if condition_genes(c) not in seen:
            seen.add(condition_genes(c))
            conditions.append(c)
            roles.append("reverse_candidate")
    return conditions, roles

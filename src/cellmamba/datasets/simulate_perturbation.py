"""A simulated CRISPRa perturbation screen (singles and pairs) with known ground truth, in GEARS' format.

No real CRISPR-combination data can be fetched in the demo, so the perturbation task runs on
this simulator. Perturbations act through a random gene regulatory network (GRN); pairs are
additive in log space, except a fraction with a non-additive term. Every random draw comes from
``numpy.random.default_rng(seed)``, in this order:

1. Genes and baseline: the ``n_genes`` most expressed genes of the most frequent ``bulk_labels``
   type (Dendritic) of scanpy's bundled ``pbmc68k_reduced`` (real symbols, so a pretrained
   vocabulary maps them). Baseline log rate ``base`` = log of that type's mean normalised
   expression (:func:`cellmamba.datasets.simulate.pbmc68k_profiles`), kept in pbmc68k's gene order.
   One cell type only, like K562 in Norman 2019.
2. GRN: a random topological order of the genes; each pair (i before j) is an edge i -> j with
   probability ``grn_density``, weight = random sign x U(``weight_low``, ``weight_high``). W is
   a DAG (nilpotent), so ``M = inv(I - W) = sum_k W^k`` is exact and finite: a shock vector s
   (n_genes,) gives the log-rate change ``delta = s @ M`` (its effects on all downstream genes).
3. Perturbed genes: ``n_perturbed_genes`` drawn among the upstream half of the order that have
   at least one target (so each perturbation has downstream effects). CRISPRa shock of gene g:
   ``effect_size * U(0.75, 1.25)`` on g itself; single delta = shock_g e_g @ M.
4. Combos: ``n_combos`` distinct unordered pairs of perturbed genes, each spelled in a random
   order. ``round(interaction_fraction * n_combos)`` of them are non-additive, each with
   probability 1/2 ``synergy`` (delta = d_A + d_B + m @ M, m an extra shock of random sign and
   size ``effect_size * U(0.5, 1)`` on a random module of ``module_size`` genes) or
   ``buffering`` (delta = ``buffering_scale`` * (d_A + d_B)); the rest are ``additive``
   (delta = d_A + d_B exactly).
5. Singles are spelled ``A+ctrl`` or ``ctrl+A`` at random (both spellings occur, as in Norman).
   Cells: ``n_ctrl`` controls and ``cells_per_condition`` per single and combo, in random order.
6. Counts: per cell, log rate = base + delta[condition] + N(0, ``cell_noise_sd``) per gene;
   library L = library_size * exp(N(-v^2/2, v)), v = ``library_sd``; counts ~ negative binomial
   with mean L * softmax(log rate) and inverse dispersion ``dispersion`` (Gamma-Poisson).

Output: GEARS' ``perturb_processed.h5ad`` layout (DATASETS.md §5) so :func:`read_norman` and the
perturbation code read it unchanged: X = log1p(normalize_total(counts)) at scanpy's default target
(the median total), CSR float32; layer ``counts``; obs ``condition``, ``cell_type`` (one value),
``dose_val``, ``control``, ``condition_name``; var ``gene_name``; uns ``rank_genes_groups_cov_all``
(scanpy's t-test ranking vs ctrl, all genes, as GEARS' ``get_DE_genes``), ``top_non_dropout_de_20``,
``top_non_zero_de_20``, ``non_zeros_gene_idx``, ``non_dropout_gene_idx`` (GEARS 0.0.2
``get_dropout_non_zero_genes``). Ground truth in ``uns["simulation"]`` (:data:`UNS_PERT_SIMULATION`):
``conditions`` and ``delta`` (n_conditions, n_genes) the true log-rate change of every non-ctrl
condition, ``delta_normalized`` the true change of log relative expression (delta minus the
compositional shift the library normalisation brings: ``delta - logsumexp(base + delta) +
logsumexp(base)``), ``combo_type`` (combo -> additive / synergy / buffering), the GRN edges
(``grn_source``, ``grn_target``, ``grn_weight``), the shocks, every parameter, the seed and
``simulated`` True. ``uns["cellmamba"]``: ``x_kind`` ``other``, ``simulated`` True.

Split coverage: with the defaults (10 target genes, 30 of their 45 pairs) GEARS' split keeps
int(0.75 * 10) = 7 genes seen, so 3 are unseen; combo_seen0 is empty only when none of the 30
pairs joins two of those 3, a chance of C(42,30)/C(45,30) ~ 3% per data seed (seed 0 has one).

Not from a paper: this is the project's own demo simulator; the departure is the data
(simulated, not Norman 2019). The measured deltas differ from ``delta`` by the compositional
shift, sampling noise and the log1p compression of low counts.
"""
from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..conditions import CTRL, gears_de_genes
from ..errors import InputError
from ..keys import LAYER_COUNTS, OBS_CELL_TYPE, OBS_CONDITION, UNS, UNS_X_KIND
from ..keys import UNS_SIMULATION as UNS_PERT_SIMULATION
from .schema import UNS_SIMULATED, VAR_GENE_NAME
from .simulate import pbmc68k_profiles

if TYPE_CHECKING:  # annotations only: anndata is imported where it is used
    import anndata as ad

__all__ = ["simulate_perturbation", "gears_de_genes", "gears_dropout_non_zero_genes", "UNS_PERT_SIMULATION",
           "COMBO_TYPES"]

log = logging.getLogger(__name__)

COMBO_TYPES = ("additive", "synergy", "buffering")
_N_TOP_DE = 20


def _baseline(n_genes: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Gene symbols and log baseline rate of the most frequent pbmc68k_reduced bulk_labels type."""
    import scanpy as sc

    labels = sc.datasets.pbmc68k_reduced().obs["bulk_labels"].astype(str)
    cell_type = labels.value_counts().sort_index().idxmax()  # ties (none in the file) go to the first name
    profile = pbmc68k_profiles().loc[cell_type]
    if n_genes > int((profile > 0).sum()):
        raise InputError(f"simulate_perturbation: n_genes={n_genes}; pbmc68k_reduced's {cell_type} profile has only "
                         f"{int((profile > 0).sum())} expressed genes")
    keep = np.sort(np.argsort(-profile.to_numpy(), kind="stable")[:n_genes])
    rates = profile.to_numpy()[keep]
    return profile.index.to_numpy()[keep].astype(str), np.log(rates / rates.sum()), cell_type


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def gears_dropout_non_zero_genes(adata, ranked: dict) -> dict:
    """The four uns entries of GEARS 0.0.2 ``get_dropout_non_zero_genes``.

    A gene is non-zero in a condition when its mean log expression there is not 0 (some cell
    expresses it), a "true zero" when its mean is 0 there and in ctrl; non-dropout = non-zero or
    true zero. (Computed from stored-value counts: a mean of non-negative values is 0 exactly
    when no cell has a non-zero value, so this equals GEARS' float test without its dense copies.)

    Parameters
    ----------
    adata
        (n_cells, n_genes), X CSR or dense log expression; obs ``condition``, ``condition_name``.
    ranked
        condition_name -> ranked var names (:func:`gears_de_genes`).

    Returns
    -------
    dict with ``top_non_dropout_de_20``, ``top_non_zero_de_20`` (condition_name -> str array of
    <= 20 var names) and ``non_zeros_gene_idx``, ``non_dropout_gene_idx`` (condition_name ->
    sorted int64 positions in var).
    """
    X = sp.csr_matrix(adata.X)
    conditions = adata.obs[OBS_CONDITION].astype(str).to_numpy()
    full_to_pert = dict(zip(adata.obs["condition_name"].astype(str), conditions))
    position = {g: i for i, g in enumerate(adata.var_names)}

    def expressed(cond: str) -> np.ndarray:
        rows = X[conditions == cond]
        return np.bincount(rows.indices[rows.data != 0], minlength=X.shape[1]) > 0

    ctrl_expressed = expressed(CTRL)
    out = {"top_non_dropout_de_20": {}, "non_dropout_gene_idx": {}, "non_zeros_gene_idx": {},
           "top_non_zero_de_20": {}}
    for name, genes in ranked.items():
        non_zero = expressed(full_to_pert[name])
        non_dropout = non_zero | ~ctrl_expressed
        order = np.array([position[g] for g in genes], dtype=np.int64)
        out["non_zeros_gene_idx"][name] = np.flatnonzero(non_zero).astype(np.int64)
        out["non_dropout_gene_idx"][name] = np.flatnonzero(non_dropout).astype(np.int64)
        out["top_non_dropout_de_20"][name] = adata.var_names[order[non_dropout[order]][:_N_TOP_DE]].to_numpy().astype(str)
        out["top_non_zero_de_20"][name] = adata.var_names[order[non_zero[order]][:_N_TOP_DE]].to_numpy().astype(str)
    return out


def simulate_perturbation(*, n_perturbed_genes: int = 10, n_combos: int = 30, cells_per_condition: int = 30,
                          n_ctrl: int = 300, n_genes: int = 300, grn_density: float = 0.03, weight_low: float = 0.3,
                          weight_high: float = 0.6, effect_size: float = 1.5, interaction_fraction: float = 0.35,
                          module_size: int = 5, buffering_scale: float = 0.5, library_size: float = 3000.0,
                          library_sd: float = 0.2, cell_noise_sd: float = 0.1, dispersion: float = 5.0,
                          cell_type: str = "K562", seed: int = 0) -> "ad.AnnData":
    """Simulate a CRISPRa single + pair perturbation screen through a random GRN (module docstring).

    Parameters
    ----------
    n_perturbed_genes, n_combos
        Number of target genes (each has a single) and of distinct pairs (<= n(n-1)/2).
    cells_per_condition, n_ctrl
        Cells per single / combo and control cells. Defaults: 300 + 40 x 30 = 1,500 cells.
    n_genes
        Genes measured (the most expressed of the baseline profile, at most 765).
    grn_density, weight_low, weight_high
        Edge probability of the DAG and the range of |edge weight|.
    effect_size
        Mean CRISPRa shock on the target's log rate.
    interaction_fraction, module_size, buffering_scale
        Share of non-additive combos; size of a synergy module; scale of a buffered combo.
    library_size, library_sd, cell_noise_sd, dispersion
        Mean total count, sd of log library size, sd of per-cell per-gene log-rate noise,
        negative-binomial inverse dispersion.
    cell_type
        The single obs ``cell_type`` value (no ``_``: it is part of ``condition_name``).
    seed
        Seed of every draw.

    Returns
    -------
    AnnData (n_cells, n_genes) in GEARS' perturb_processed.h5ad layout (module docstring); var
    index = gene symbols.
    """
    import anndata as ad
    import scanpy as sc

    ints = {"n_perturbed_genes": (n_perturbed_genes, 2), "n_combos": (n_combos, 0),
            "cells_per_condition": (cells_per_condition, 1), "n_ctrl": (n_ctrl, 2), "n_genes": (n_genes, 10),
            "module_size": (module_size, 1)}
    for name, (value, low) in ints.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InputError(f"simulate_perturbation: {name}={value!r}; expected an int >= {low}")
    floats = {"grn_density": (grn_density, 0, 1), "weight_low": (weight_low, 0, np.inf),
              "weight_high": (weight_high, weight_low, np.inf), "effect_size": (effect_size, 0, np.inf),
              "interaction_fraction": (interaction_fraction, 0, 1), "buffering_scale": (buffering_scale, 0, np.inf),
              "library_size": (library_size, 1e-9, np.inf), "library_sd": (library_sd, 0, np.inf),
              "cell_noise_sd": (cell_noise_sd, 0, np.inf), "dispersion": (dispersion, 1e-9, np.inf)}
    for name, (value, low, high) in floats.items():
        if not np.isfinite(value) or not low <= value <= high:
            raise InputError(f"simulate_perturbation: {name}={value!r}; expected a finite number in [{low}, {high}]")
    max_pairs = n_perturbed_genes * (n_perturbed_genes - 1) // 2
    if n_combos > max_pairs:
        raise InputError(f"simulate_perturbation: n_combos={n_combos} exceeds the {max_pairs} pairs of "
                         f"{n_perturbed_genes} perturbed genes")
    if not cell_type or "_" in cell_type or "+" in cell_type:
        raise InputError(f"simulate_perturbation: cell_type={cell_type!r}; expected a non-empty name without '_' or '+'")

    genes, base, source_type = _baseline(int(n_genes))
    n = len(genes)
    rng = np.random.default_rng(seed)

    # GRN: a DAG along a random topological order
    order = rng.permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    edges = (rng.random((n, n)) < grn_density) & (rank[:, None] < rank[None, :])
    W = np.where(edges, rng.choice([-1.0, 1.0], size=(n, n)) * rng.uniform(weight_low, weight_high, size=(n, n)), 0.0)
    # (I - W) is triangular up to the permutation, so the inverse is exact: sum of all path products
    M = np.linalg.inv(np.eye(n) - W)

    regulators = np.sort(order[: n // 2][edges[order[: n // 2]].any(axis=1)])
    if len(regulators) < n_perturbed_genes:
        raise InputError(f"simulate_perturbation: only {len(regulators)} upstream genes have targets at "
                         f"grn_density={grn_density}; n_perturbed_genes={n_perturbed_genes} needs more (raise the density)")
    targets = np.sort(rng.choice(regulators, size=n_perturbed_genes, replace=False))
    shock = effect_size * rng.uniform(0.75, 1.25, size=n_perturbed_genes)
    single_delta = shock[:, None] * M[targets]  # (n_perturbed, n_genes): row g of M scaled

    pairs = list(itertools.combinations(range(n_perturbed_genes), 2))
    chosen = [pairs[i] for i in np.sort(rng.choice(len(pairs), size=n_combos, replace=False))]
    swap = rng.random(n_combos) < 0.5
    n_inter = int(round(interaction_fraction * n_combos))
    inter = set(rng.choice(n_combos, size=n_inter, replace=False).tolist()) if n_inter else set()
    combo_names, combo_types, combo_delta, synergy = [], {}, [], {}
    for k, (a, b) in enumerate(chosen):
        ga, gb = genes[targets[a]], genes[targets[b]]
        name = f"{gb}+{ga}" if swap[k] else f"{ga}+{gb}"
        delta = single_delta[a] + single_delta[b]
        kind = "additive"
        if k in inter:
            kind = "synergy" if rng.random() < 0.5 else "buffering"
            if kind == "synergy":
                module = np.sort(rng.choice(n, size=min(module_size, n), replace=False))
                extra = rng.choice([-1.0, 1.0]) * effect_size * rng.uniform(0.5, 1.0, size=len(module))
                delta = delta + extra @ M[module]
                synergy[name] = {"genes": genes[module], "shock": extra}
            else:
                delta = buffering_scale * delta
        combo_names.append(name)
        combo_types[name] = kind
        combo_delta.append(delta)

    spell_first = rng.random(n_perturbed_genes) < 0.5
    if spell_first.all() or not spell_first.any():
        spell_first[0], spell_first[1] = True, False  # both spellings occur, as in Norman
    single_names = [f"{genes[t]}+ctrl" if first else f"ctrl+{genes[t]}" for t, first in zip(targets, spell_first)]
    conditions = single_names + combo_names
    delta = np.vstack([single_delta] + ([np.vstack(combo_delta)] if combo_delta else []))

    cell_condition = np.concatenate([np.full(n_ctrl, -1), np.repeat(np.arange(len(conditions)), cells_per_condition)])
    cell_condition = cell_condition[rng.permutation(len(cell_condition))]
    n_cells = len(cell_condition)
    cell_delta = np.vstack([np.zeros((1, n)), delta])[cell_condition + 1]
    logits = base[None, :] + cell_delta + rng.normal(0.0, cell_noise_sd, size=(n_cells, n))
    prob = np.exp(logits - _logsumexp(logits)[:, None])
    library = library_size * np.exp(rng.normal(-library_sd**2 / 2, library_sd, size=n_cells))
    mean = library[:, None] * prob
    counts = rng.poisson(rng.gamma(float(dispersion), mean / float(dispersion))).astype(np.float32)

    labels = np.array([CTRL] + conditions, dtype=object)[cell_condition + 1]
    dose = np.where(labels == CTRL, "1", "1+1")  # GEARS: '1+1' when the condition has a '+'
    condition_name = [f"{cell_type}_{c}_{d}" for c, d in zip(labels, dose)]
    obs = pd.DataFrame({
        OBS_CONDITION: pd.Categorical(labels, categories=[CTRL] + conditions),
        OBS_CELL_TYPE: pd.Categorical([cell_type] * n_cells),
        "dose_val": pd.Categorical(dose),
        "control": (labels == CTRL).astype(np.int64),
        "condition_name": pd.Categorical(condition_name),
    }, index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    var = pd.DataFrame({VAR_GENE_NAME: genes}, index=pd.Index(genes))
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.layers[LAYER_COUNTS] = adata.X.copy()
    sc.pp.normalize_total(adata)  # scanpy's default target: the median total, as GEARS' file
    sc.pp.log1p(adata)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.uns.pop("log1p", None)

    ranked = gears_de_genes(adata, ctrl_name=f"{cell_type}_{CTRL}_1")
    adata.uns["rank_genes_groups_cov_all"] = ranked
    adata.uns.update(gears_dropout_non_zero_genes(adata, ranked))

    base_lse = _logsumexp(base)
    src, dst = np.nonzero(W)
    params = {"n_perturbed_genes": int(n_perturbed_genes), "n_combos": int(n_combos),
              "cells_per_condition": int(cells_per_condition), "n_ctrl": int(n_ctrl), "n_genes": int(n),
              "grn_density": float(grn_density), "weight_low": float(weight_low), "weight_high": float(weight_high),
              "effect_size": float(effect_size), "interaction_fraction": float(interaction_fraction),
              "module_size": int(module_size), "buffering_scale": float(buffering_scale),
              "library_size": float(library_size), "library_sd": float(library_sd),
              "cell_noise_sd": float(cell_noise_sd), "dispersion": float(dispersion), "cell_type": cell_type}
    adata.uns[UNS_PERT_SIMULATION] = {
        "simulator": "cellmamba.datasets.simulate_perturbation.simulate_perturbation", "simulated": True,
        "seed": int(seed), "parameters": params,
        "baseline_source": f"scanpy.datasets.pbmc68k_reduced(): .raw expm1 mean of bulk_labels {source_type!r}",
        "base_log_rate": base,
        "conditions": np.asarray(conditions, dtype=str), "delta": delta,
        "delta_normalized": delta - _logsumexp(base[None, :] + delta)[:, None] + base_lse,
        "combo_type": combo_types,
        "synergy": {k: {"genes": np.asarray(v["genes"], dtype=str), "shock": v["shock"]} for k, v in synergy.items()},
        "perturbed_genes": genes[targets].astype(str), "single_shock": shock,
        "grn_source": genes[src].astype(str), "grn_target": genes[dst].astype(str), "grn_weight": W[src, dst],
        "topological_order": genes[order].astype(str),
    }
    adata.uns[UNS] = {UNS_X_KIND: "other", UNS_SIMULATED: True,
                      "x_description": "log1p(normalize_total(counts)) at scanpy's default target (median total)"}
    kinds = pd.Series(combo_types, dtype=object).value_counts().to_dict() if combo_types else {}
    log.info("simulated perturbation screen: %d cells x %d genes, %d singles + %d combos %s, %d GRN edges (seed %d)",
             n_cells, n, n_perturbed_genes, n_combos, kinds, len(src), seed)
    return adata

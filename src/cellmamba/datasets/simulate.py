"""A simulated batch-integration dataset with known ground truth (the demo's integration task).

Model (every draw from ``numpy.random.default_rng(seed)``, in this order):

1. profiles ``P`` (n_types, n_genes): per-cell-type relative expression, each row summing to 1.
   Default: the cell-type means of scanpy's bundled ``pbmc68k_reduced`` (``.raw`` expm1, i.e.
   normalised expression of 765 real genes, grouped by the 10 FACS-sorted ``bulk_labels``), so
   gene symbols are real and map to the pretraining vocabulary; the simulator adds nothing to
   the cell-type signal but its own sampling noise.
2. composition ``W`` (n_batches, n_types) ~ Dirichlet(composition_alpha * 1): each batch has
   its own cell-type mixture; cells are split into equal batches (the remainder goes to the
   first ones) and each cell's type drawn from its batch's mixture.
3. gene-wise batch factors ``F`` (n_batches, n_genes) = exp(N(-s^2/2, s)), s = batch_effect_sd
   (log-normal with mean 1), and a library-size factor per batch exp(N(0, batch_library_sd)).
4. library size per cell L = library_size * batch library factor * exp(N(-v^2/2, v)), v = library_sd.
5. counts ~ negative binomial with mean L * P[type] * F[batch] and inverse dispersion
   ``dispersion`` (Gamma-Poisson: rate ~ Gamma(dispersion, mean / dispersion), count ~ Poisson).

Ground truth lands in the AnnData: obs ``cell_type``, ``batch``, ``true_library_size``;
varm ``batch_factor`` (n_genes, n_batches) = F.T; ``uns["cellmamba"]["simulation"]`` with every
parameter, the composition W, the batch library factors and the profile source.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..keys import (LAYER_COUNTS, OBS_BATCH, OBS_CELL_TYPE, UNS, UNS_READER, UNS_SIMULATION, UNS_X_KIND,
                    VARM_BATCH_FACTOR)
from .schema import UNS_SIMULATED, VAR_GENE_NAME

if TYPE_CHECKING:  # annotations only: anndata is imported where it is used
    import anndata as ad

__all__ = ["simulate_integration", "pbmc68k_profiles", "VARM_BATCH_FACTOR", "UNS_SIMULATION"]

log = logging.getLogger(__name__)

_CHUNK_CELLS = 4096


def pbmc68k_profiles(*, label_key: str = "bulk_labels") -> pd.DataFrame:
    """Cell-type expression profiles from scanpy's bundled ``pbmc68k_reduced`` (no download).

    Returns
    -------
    DataFrame (n_types = 10, n_genes = 765), index = cell types (sorted), columns = gene
    symbols: the mean of expm1(``.raw.X``) (normalised expression) over the cells of each type,
    each row divided by its sum.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X
    rates = raw.expm1() if sp.issparse(raw) else np.expm1(np.asarray(raw, dtype=np.float64))
    rates = sp.csr_matrix(rates, dtype=np.float64)
    labels = adata.obs[label_key].astype(str).to_numpy()
    types = sorted(set(labels))
    means = np.vstack([np.asarray(rates[labels == t].mean(axis=0)).ravel() for t in types])
    means /= means.sum(axis=1, keepdims=True)
    return pd.DataFrame(means, index=pd.Index(types, name="cell_type"),
                        columns=pd.Index(adata.raw.var_names.astype(str), name="gene"))


def _check_positive(name: str, value, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not np.isfinite(value) or not ok:
        raise InputError(f"simulate_integration: {name}={value!r}; expected a {'non-negative' if allow_zero else 'positive'} "
                         "finite number")


def simulate_integration(*, n_cells: int = 1500, n_batches: int = 3, seed: int = 0,
                         profiles: pd.DataFrame | None = None, library_size: float = 2000.0,
                         library_sd: float = 0.3, batch_library_sd: float = 0.4, batch_effect_sd: float = 0.5,
                         dispersion: float = 5.0, composition_alpha: float = 2.0) -> "ad.AnnData":
    """Simulate raw counts of known cell types in batches with known batch effects.

    Parameters
    ----------
    n_cells, n_batches, seed
        Size, number of batches (>= 2) and the seed of every random draw.
    profiles
        (n_types, n_genes) non-negative relative expression (rows are normalised to sum 1),
        index = cell types, columns = gene symbols; default :func:`pbmc68k_profiles`.
    library_size
        Mean total count of a cell before the batch's library factor.
    library_sd
        Sd of the per-cell log library size.
    batch_library_sd
        Sd of the per-batch log library factor (library-size shift between batches).
    batch_effect_sd
        Sd of the gene-wise log batch factors (0 = no gene-wise batch effect).
    dispersion
        Negative-binomial inverse dispersion (variance = mean + mean^2 / dispersion).
    composition_alpha
        Dirichlet concentration of each batch's cell-type mixture (small = batches differ more).

    Returns
    -------
    AnnData (n_cells, n_genes): X float32 CSR integer counts (x_kind ``counts``) and the same in
    layer ``counts``; obs ``cell_type``, ``batch`` (``batch0``...), ``true_library_size``; var
    index = gene symbols, ``gene_name``; varm ``batch_factor`` (n_genes, n_batches);
    ``uns["cellmamba"]``: ``simulated`` True, ``x_kind``, ``simulation`` (parameters and truth).
    """
    import anndata as ad

    if int(n_cells) < 1 or int(n_batches) < 2:
        raise InputError(f"simulate_integration: n_cells={n_cells!r}, n_batches={n_batches!r}; expected n_cells >= 1 "
                         "and n_batches >= 2")
    for name, value in (("library_size", library_size), ("dispersion", dispersion),
                        ("composition_alpha", composition_alpha)):
        _check_positive(name, value)
    for name, value in (("library_sd", library_sd), ("batch_library_sd", batch_library_sd),
                        ("batch_effect_sd", batch_effect_sd)):
        _check_positive(name, value, allow_zero=True)
    source = "profiles argument"
    if profiles is None:
        profiles, source = pbmc68k_profiles(), "scanpy.datasets.pbmc68k_reduced(): .raw expm1 means per bulk_labels"
    P = np.asarray(profiles, dtype=np.float64)
    if P.ndim != 2 or P.shape[0] < 2 or (P < 0).any() or not np.isfinite(P).all() or (P.sum(axis=1) <= 0).any():
        raise InputError(f"simulate_integration: profiles of shape {P.shape} must be finite, non-negative, with >= 2 "
                         "cell types (rows) each with a positive sum")
    P = P / P.sum(axis=1, keepdims=True)
    types = np.asarray(profiles.index).astype(str)
    genes = pd.Index(np.asarray(profiles.columns).astype(str))
    n_cells, n_batches = int(n_cells), int(n_batches)
    n_types, n_genes = P.shape

    rng = np.random.default_rng(seed)
    composition = rng.dirichlet(np.full(n_types, float(composition_alpha)), size=n_batches)
    sizes = np.full(n_batches, n_cells // n_batches)
    sizes[: n_cells % n_batches] += 1
    batch = np.repeat(np.arange(n_batches), sizes)
    cell_type = np.concatenate([rng.choice(n_types, size=s, p=composition[b]) for b, s in enumerate(sizes)])
    factors = np.exp(rng.normal(-batch_effect_sd**2 / 2, batch_effect_sd, size=(n_batches, n_genes)))
    batch_library = np.exp(rng.normal(0.0, batch_library_sd, size=n_batches))
    library = library_size * batch_library[batch] * np.exp(rng.normal(-library_sd**2 / 2, library_sd, size=n_cells))

    blocks = []
    for start in range(0, n_cells, _CHUNK_CELLS):
        sl = slice(start, min(start + _CHUNK_CELLS, n_cells))
        mean = library[sl, None] * P[cell_type[sl]] * factors[batch[sl]]
        counts = rng.poisson(rng.gamma(float(dispersion), mean / float(dispersion)))
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
    X = sp.vstack(blocks).tocsr()

    obs = pd.DataFrame({OBS_CELL_TYPE: pd.Categorical(types[cell_type], categories=sorted(types)),
                        OBS_BATCH: pd.Categorical([f"batch{b}" for b in batch],
                                                  categories=[f"batch{b}" for b in range(n_batches)]),
                        "true_library_size": library},
                       index=pd.Index([f"sim{i}" for i in range(n_cells)]))
    var = pd.DataFrame({VAR_GENE_NAME: genes.to_numpy()}, index=genes)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers[LAYER_COUNTS] = X.copy()
    adata.varm[VARM_BATCH_FACTOR] = factors.T.copy()
    adata.uns[UNS] = {
        UNS_X_KIND: "counts", UNS_SIMULATED: True, UNS_READER: "sim_integration",
        UNS_SIMULATION: {
            "simulator": "cellmamba.datasets.simulate.simulate_integration",
            "n_cells": n_cells, "n_batches": n_batches, "seed": int(seed), "library_size": float(library_size),
            "library_sd": float(library_sd), "batch_library_sd": float(batch_library_sd),
            "batch_effect_sd": float(batch_effect_sd), "dispersion": float(dispersion),
            "composition_alpha": float(composition_alpha), "profile_source": source,
            "cell_types": list(types), "composition": composition, "batch_library_factor": batch_library,
        },
    }
    log.info("simulated %d cells x %d genes: %d cell types in %d batches (seed %d)", n_cells, n_genes, n_types,
             n_batches, seed)
    return adata

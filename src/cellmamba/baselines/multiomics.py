"""Multi-omics baseline: PCA of each modality, then canonical correlation analysis (PCA + CCA).

Input: a paired dataset as :func:`cellmamba.datasets.read_bmmc` returns it (every feature of
both modalities, var ``modality`` = ``rna`` / ``protein`` / ``atac``, raw counts in
``layers["counts"]``). :func:`modality_matrices` splits it and normalises each modality from
the counts; :func:`pca_cca` embeds both modalities of the same cells into one space in which
FOSCTTM, omics mixing and label transfer (:func:`cellmamba.metrics.score_multiomics`) are
computed.

Method, and where it departs from the usual recipes:

- normalisation: RNA and ATAC ``log1p(counts / cell total * 1e4)`` (scanpy's normalize_total +
  log1p); ADT: CLR per cell, Seurat's ``NormalizeData(method = "CLR", margin = 2)``:
  ``log1p(x / exp(mean_j log1p(x_j)))`` over the cell's proteins. ATAC is NOT TF-IDF / LSI
  normalised (the ArchR / Signac standard): the same log-normalisation as RNA keeps one code
  path for every modality; an LSI variant would be a separate method.
- PCA: the normalised values, centred, not scaled, ``n_pcs`` components (capped at
  ``min(n_cells, n_features) - 1``), exact ARPACK (seeded; sparse input stays sparse).
- CCA: computed exactly by an SVD instead of sklearn's ``CCA`` (NIPALS). Each PC matrix is
  centred and whitened (the PCs are uncorrelated, so ``Sigma11^-1/2`` is a division by each PC's
  sd; PCs with a variance below 1e-10 of the largest are dropped), then the SVD of the
  whitened cross-covariance ``Sigma11^-1/2 Sigma12 Sigma22^-1/2 = U S V^T`` gives the canonical
  correlations ``S`` and directions. The variates are ``Z1w U[:, :k]`` and ``Z2w V[:, :k]``:
  unit variance, the k-th pair correlated by ``S[k]``. Why not sklearn: its CCA is iterative
  (power iterations with deflation, per component), converges slowly or not at all when
  canonical correlations are close, and costs many passes over the cells, whereas the SVD is
  exact, deterministic and one (n_pcs x n_pcs) decomposition. No regularisation: with PCs as
  input (n_pcs << n_cells) the covariances are well conditioned.
- The shared embedding of a modality is its canonical variates, not scaled by the canonical
  correlations (Seurat's CCA integration L2-normalises them instead; the metrics here use
  them as they are).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._util import seed_all
from ..errors import InputError
from ..keys import LAYER_COUNTS
from ..keys import VAR_MODALITY as _VAR_MODALITY
from ..normalisation import clr_per_cell, log_normalise
from ._common import check_positive_int, reference_pca

__all__ = ["MULTIOMICS_METHODS", "MODALITY_NORMALISATION", "modality_matrices", "clr_per_cell", "log_normalise",
           "pca_cca", "canonical_correlations", "run_multiomics_baseline", "run_multiomics_baseline_files"]

log = logging.getLogger(__name__)

MULTIOMICS_METHODS = ("pca_cca",)
#: how :func:`modality_matrices` normalises each modality's counts
MODALITY_NORMALISATION = {"rna": "log1p_norm", "atac": "log1p_norm", "protein": "clr"}
_RANK_TOL = 1e-10


def modality_matrices(adata, *, source: str = "dataset") -> dict[str, tuple[Any, np.ndarray]]:
    """Split a paired dataset by var ``modality`` and normalise each modality from its counts.

    Parameters
    ----------
    adata
        (n_cells, n_features) AnnData as :func:`cellmamba.datasets.read_bmmc` returns it: var
        ``modality`` (``rna`` / ``protein`` / ``atac``), raw counts in ``layers["counts"]``.
    source
        Names the dataset in error messages.

    Returns
    -------
    dict modality -> ``(matrix, feature_names)``, modalities in the order they first appear in
    var (GEX first in the BMMC files): ``rna`` and ``atac`` float32 CSR (n_cells, n_features)
    ``log1p(counts / total * 1e4)`` (:func:`log_normalise`), ``protein`` dense float32 CLR per
    cell (:func:`clr_per_cell`); feature_names (n_features,) str = the var names. Each
    modality is normalised over its own features only.
    """
    if _VAR_MODALITY not in adata.var:
        raise InputError(f"{source}: var has no column {_VAR_MODALITY!r} (each feature's modality); read the file "
                         "with read_bmmc, which adds it; found " + str(list(adata.var.columns)))
    if LAYER_COUNTS not in adata.layers:
        raise InputError(f"{source}: layer {LAYER_COUNTS!r} (raw counts) missing; found layers {list(adata.layers)}")
    modality = adata.var[_VAR_MODALITY].astype(str).to_numpy()
    order = list(dict.fromkeys(modality))
    unknown = sorted(set(order) - set(MODALITY_NORMALISATION))
    if unknown:
        raise InputError(f"{source}: var[{_VAR_MODALITY!r}] has values {unknown}; expected "
                         f"{sorted(MODALITY_NORMALISATION)}")
    if len(order) < 2:
        raise InputError(f"{source}: var[{_VAR_MODALITY!r}] holds only {order}; a paired multi-omics dataset has two "
                         "modalities")
    counts = adata.layers[LAYER_COUNTS]
    counts = counts.tocsc() if sp.issparse(counts) else np.asarray(counts)  # column slices
    data = counts.data if sp.issparse(counts) else counts
    if data.size and (data.min() < 0 or not np.isfinite(data).all()):
        raise InputError(f"{source}: layer {LAYER_COUNTS!r} holds negative or non-finite values; expected raw counts")
    out = {}
    for mod in order:
        cols = np.flatnonzero(modality == mod)
        block = counts[:, cols]
        X = clr_per_cell(block) if MODALITY_NORMALISATION[mod] == "clr" else log_normalise(block)
        out[mod] = (X, adata.var_names[cols].to_numpy().astype(str))
        log.info("%s: modality %s, %d features, %s", source, mod, len(cols), MODALITY_NORMALISATION[mod])
    return out


def _check_pair(x1, x2):
    for name, x in (("x1", x1), ("x2", x2)):
        if getattr(x, "ndim", None) != 2:
            raise InputError(f"pca_cca: {name} must be a 2-D (n_cells, n_features) matrix; got {type(x).__name__} "
                             f"of shape {getattr(x, 'shape', None)}")
        data = x.data if sp.issparse(x) else np.asarray(x)
        if not np.isfinite(data).all():
            raise InputError(f"pca_cca: {name} holds non-finite values (NaN or inf)")
    if x1.shape[0] != x2.shape[0]:
        raise InputError(f"pca_cca: x1 has {x1.shape[0]} rows and x2 {x2.shape[0]}; the two modalities must hold the "
                         "SAME cells in the same order")
    if x1.shape[0] < 3:
        raise InputError(f"pca_cca: {x1.shape[0]} cells; expected at least 3")


def _whiten(Z: np.ndarray) -> np.ndarray:
    """Centred PCs divided by their sd; (near-)constant PCs dropped."""
    Z = Z - Z.mean(axis=0)
    sd = Z.std(axis=0)
    keep = sd > np.sqrt(_RANK_TOL) * max(sd.max(), np.finfo(float).tiny)
    return Z[:, keep] / sd[keep]


def canonical_correlations(x1, x2) -> np.ndarray:
    """Canonical correlations of the variates :func:`pca_cca` returns: corr(u_k, v_k) per column.

    Parameters
    ----------
    x1, x2
        (n_cells, k) paired canonical variates.

    Returns
    -------
    (k,) float64.
    """
    a = np.asarray(x1, dtype=np.float64)
    b = np.asarray(x2, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def _pcs(x, n_pcs: int, seed: int, name: str) -> np.ndarray:
    n_comps = min(n_pcs, min(x.shape) - 1)
    if n_comps < 1:
        raise InputError(f"pca_cca: {name} of shape {x.shape} allows no principal component")
    if n_comps < n_pcs:
        log.info("pca_cca: %s of shape %s: n_pcs capped at %d", name, x.shape, n_comps)
    Z, _, _ = reference_pca(x, None, n_comps=n_comps, seed=seed, what=f"pca_cca {name}")
    return Z.astype(np.float64)


def pca_cca(x1, x2, *, n_pcs: int = 50, n_components: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PCA of each modality, then CCA of the two PC matrices: one shared space for both.

    Parameters
    ----------
    x1, x2
        (n_cells, n_features_1) and (n_cells, n_features_2) normalised values (dense or
        sparse) of the SAME cells, row i of both being one cell.
    n_pcs
        Principal components per modality (capped at ``min(n_cells, n_features) - 1``).
    n_components
        Canonical pairs kept (capped at the smaller number of usable PCs).
    seed
        ARPACK start vector of both PCAs.

    Returns
    -------
    ``(u, v)``: float64 (n_cells, k) canonical variates of x1 and of x2, k = n_components after
    capping; each column has unit variance, columns are ordered by decreasing canonical
    correlation ``corr(u[:, j], v[:, j])`` (:func:`canonical_correlations`). Signs: each
    direction pair is oriented so the largest-|loading| PC of x1 loads positively.
    """
    check_positive_int(n_pcs, key="n_pcs", what="pca_cca")
    check_positive_int(n_components, key="n_components", what="pca_cca")
    _check_pair(x1, x2)
    z1 = _whiten(_pcs(x1, n_pcs, seed, "x1"))
    z2 = _whiten(_pcs(x2, n_pcs, seed, "x2"))
    n = z1.shape[0]
    k = min(n_components, z1.shape[1], z2.shape[1])
    if k < n_components:
        log.info("pca_cca: n_components capped at %d (usable PCs: %d and %d)", k, z1.shape[1], z2.shape[1])
    # whitened cross-covariance Sigma11^-1/2 Sigma12 Sigma22^-1/2 (z1, z2 have identity covariance
    # up to the 1/n of np.std, the same on both sides)
    C = z1.T @ z2 / n
    U, S, Vt = np.linalg.svd(C, full_matrices=False)
    U, V = U[:, :k], Vt[:k].T
    flip = np.sign(U[np.abs(U).argmax(axis=0), np.arange(k)])
    flip[flip == 0] = 1.0
    U, V = U * flip, V * flip
    log.info("pca_cca: %d cells, PCs %d / %d, canonical correlations %s", n, z1.shape[1], z2.shape[1],
             np.array2string(S[:k], precision=3, max_line_width=200))
    return z1 @ U, z2 @ V


def run_multiomics_baseline(adata, *, method: str = "pca_cca", n_pcs: int = 50, n_components: int = 20,
                            seed: int = 0, source: str = "dataset") -> dict[str, Any]:
    """Embed both modalities of a paired dataset with a multi-omics baseline.

    Parameters
    ----------
    adata
        (n_cells, n_features) paired dataset as :func:`cellmamba.datasets.read_bmmc` returns it
        (exactly two modalities in var ``modality``; raw counts in ``layers["counts"]``).
    method
        ``"pca_cca"`` (:func:`pca_cca` on :func:`modality_matrices`).
    n_pcs, n_components, seed
        As :func:`pca_cca`.
    source
        Names the dataset in error messages.

    Returns
    -------
    dict: ``method``; ``modalities`` [m1, m2] (var order, e.g. ``["rna", "protein"]``);
    ``embeddings`` {m1: float32 (n_cells, k), m2: float32 (n_cells, k)}, row i = cell
    ``obs_names[i]`` in both; ``canonical_correlations`` float64 (k,); ``n_features``
    {m: int}; ``normalisation`` {m: "log1p_norm" | "clr"}; ``n_pcs``, ``n_components`` (k after
    capping), ``seed``.
    """
    seed_all(seed)
    if method not in MULTIOMICS_METHODS:
        raise InputError(f"multi-omics baseline: method is {method!r}; expected one of {list(MULTIOMICS_METHODS)}")
    mats = modality_matrices(adata, source=source)
    if len(mats) != 2:
        raise InputError(f"{source}: {len(mats)} modalities {list(mats)}; the {method} baseline pairs exactly two")
    (m1, (x1, f1)), (m2, (x2, f2)) = mats.items()
    u, v = pca_cca(x1, x2, n_pcs=n_pcs, n_components=n_components, seed=seed)
    return {"method": method, "modalities": [m1, m2],
            "embeddings": {m1: u.astype(np.float32), m2: v.astype(np.float32)},
            "canonical_correlations": canonical_correlations(u, v), "n_features": {m1: len(f1), m2: len(f2)},
            "normalisation": {m1: MODALITY_NORMALISATION[m1], m2: MODALITY_NORMALISATION[m2]},
            "n_pcs": int(n_pcs), "n_components": int(u.shape[1]), "seed": int(seed)}


def run_multiomics_baseline_files(dataset: str | os.PathLike, embedding: str | os.PathLike, *, method: str,
                                  seed: int, settings: dict | None = None) -> dict[str, Any]:
    """Read a paired standard-schema h5ad, run :func:`run_multiomics_baseline`, write the embeddings.

    Parameters
    ----------
    dataset
        Path of the dataset (.h5ad) as written from :func:`cellmamba.datasets.read_bmmc`'s output.
    embedding
        Output .h5ad of :func:`cellmamba.io.write_paired_embedding` (written atomically): the
        dataset's obs, ``obsm["X_<method>_<modality>"]`` float32 (n_cells, k) for both modalities,
        ``uns["cellmamba"]`` = method, seed, settings, canonical correlations, modalities.
    method, seed
        As :func:`run_multiomics_baseline`.
    settings
        ``n_pcs`` / ``n_components`` (config ``evaluation.multiomics.pca_cca``); an unknown key is
        an InputError.

    Returns
    -------
    The :func:`run_multiomics_baseline` dict.
    """
    from ..io import read_h5ad_checked, write_paired_embedding

    settings = dict(settings or {})
    unknown = sorted(set(settings) - {"n_pcs", "n_components"})
    if unknown:
        raise InputError(f"multi-omics baseline {method!r}: unknown setting(s) {unknown}; expected n_pcs, n_components")
    adata = read_h5ad_checked(dataset)
    out = run_multiomics_baseline(adata, method=method, seed=seed, source=str(dataset), **settings)
    info = {"method": method, "seed": int(seed),
            "settings": {"n_pcs": out["n_pcs"], "n_components": out["n_components"]},
            "canonical_correlations": out["canonical_correlations"], "normalisation": out["normalisation"],
            "n_features": out["n_features"]}
    write_paired_embedding(adata.obs, out["embeddings"], embedding, info=info)
    log.info("multi-omics baseline %s: %s -> %s", method, {m: e.shape for m, e in out["embeddings"].items()}, embedding)
    return out

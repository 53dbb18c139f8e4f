"""Helpers shared by the baselines: settings parsing, reference PCA, HVG selection."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..keys import OBS_BATCH

__all__ = ["parse_settings", "settings_dict", "reference_pca", "select_hvg", "HVG_FLAVORS"]

log = logging.getLogger(__name__)

#: scanpy HVG flavours accepted: ``seurat_v3`` ranks genes on raw counts (needs counts);
#: ``cell_ranger`` and ``seurat`` run on the log-normalised values
HVG_FLAVORS = ("seurat_v3", "cell_ranger", "seurat")


def parse_settings(cls, settings: Mapping[str, Any] | None, *, what: str):
    """Build the settings dataclass ``cls`` from a dict; an unknown key is an InputError.

    Parameters
    ----------
    cls
        A dataclass type whose fields are the accepted keys.
    settings
        Key -> value, e.g. a rule's ``params.settings``; ``None`` means all defaults.
    what
        Names the method in error messages, e.g. ``"annotation baseline 'logreg'"``.
    """
    settings = dict(settings or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise InputError(f"{what}: unknown setting(s) {unknown}; expected a subset of {names}")
    return cls(**settings)


def settings_dict(settings) -> dict:
    """The resolved settings as a plain dict (tuples become lists)."""
    out = dataclasses.asdict(settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def check_positive_int(value, *, key: str, what: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{what}: setting '{key}' is {value!r}; expected an integer >= {minimum}")


def check_choice(value, *, key: str, what: str, choices) -> None:
    if value not in choices:
        raise InputError(f"{what}: setting '{key}' is {value!r}; expected one of {list(choices)}")


def _pca_model(n_comps: int, shape: tuple[int, int], seed: int, *, what: str):
    from sklearn.decomposition import PCA

    limit = min(shape) - 1
    if n_comps > limit:
        raise InputError(f"{what}: n_comps is {n_comps}; the (cells, genes) = {shape} matrix allows at most "
                         f"{limit} (min(n_cells, n_genes) - 1 for an exact ARPACK decomposition)")
    # ARPACK: exact leading components, centring implicit for sparse input (no densifying),
    # deterministic start vector from the seed; sklearn fixes the component signs (svd_flip).
    return PCA(n_components=n_comps, svd_solver="arpack", random_state=seed)


def reference_pca(X_ref, X_query=None, *, n_comps: int, seed: int, what: str = "PCA"):
    """PCA fit on the reference cells only; the query cells are projected onto it.

    The data are centred on the reference mean (not scaled); for sparse input the centring is
    implicit, so nothing is densified.

    Parameters
    ----------
    X_ref
        (n_ref, n_genes) dense or sparse.
    X_query
        (n_query, n_genes) or None.
    n_comps
        Number of components, at most ``min(n_ref, n_genes) - 1``.
    seed
        ARPACK start vector.

    Returns
    -------
    ``(Z_ref, Z_query, components)``: float32 (n_ref, n_comps), float32 (n_query, n_comps) or
    None, and float64 (n_comps, n_genes) with ``Z = (X - mean_ref) @ components.T``.
    """
    check_positive_int(n_comps, key="n_comps", what=what)
    pca = _pca_model(n_comps, X_ref.shape, seed, what=what)
    Z_ref = pca.fit_transform(_float(X_ref)).astype(np.float32)
    Z_query = None if X_query is None else pca.transform(_float(X_query)).astype(np.float32)
    return Z_ref, Z_query, pca.components_


def _float(X):
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float64)
    return np.asarray(X, dtype=np.float64)


def select_hvg(adata, n_hvg: int, *, flavor: str, by_batch: bool, log_norm=None, what: str = "HVG selection"):
    """Boolean (n_vars,) mask of ``n_hvg`` highly variable genes, chosen by scanpy.

    Parameters
    ----------
    adata
        Standard-schema dataset (obs ``batch`` when ``by_batch``).
    n_hvg
        Number of genes; ``n_vars`` selects every gene, more is an error.
    flavor
        ``seurat_v3`` on the raw counts (:func:`cellmamba.datasets.counts_matrix`, which raises
        for a dataset without counts), ``cell_ranger`` or ``seurat`` on the log-normalised values.
    by_batch
        Pass obs ``batch`` as scanpy's ``batch_key`` (genes ranked within each batch, then merged).
    log_norm
        (n_cells, n_vars) log-normalised matrix when the caller already has it.
    """
    import anndata as ad
    import scanpy as sc

    from ..datasets import counts_matrix, log_normalized

    check_positive_int(n_hvg, key="n_hvg", what=what)
    check_choice(flavor, key="hvg_flavor", what=what, choices=HVG_FLAVORS)
    if n_hvg > adata.n_vars:
        raise InputError(f"{what}: n_hvg is {n_hvg} but the dataset has only {adata.n_vars} genes")
    if n_hvg == adata.n_vars:
        log.info("%s: n_hvg equals the number of genes (%d); every gene is kept", what, n_hvg)
        return np.ones(adata.n_vars, dtype=bool)
    if flavor == "seurat_v3":
        try:
            X = counts_matrix(adata, source=what)
        except InputError as exc:
            raise InputError(f"{exc}. hvg_flavor 'seurat_v3' ranks genes on raw counts; choose 'cell_ranger' "
                             f"or 'seurat' (on log-normalised values) for this dataset") from exc
    else:
        X = log_norm if log_norm is not None else log_normalized(adata, source=what)
    tmp = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32))
    batch_key = None
    if by_batch:
        if OBS_BATCH not in adata.obs:
            raise InputError(f"{what}: hvg_by_batch needs obs column '{OBS_BATCH}'")
        tmp.obs[OBS_BATCH] = adata.obs[OBS_BATCH].astype(str).to_numpy()
        batch_key = OBS_BATCH
    sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor=flavor, batch_key=batch_key, subset=False)
    mask = tmp.var["highly_variable"].to_numpy(dtype=bool)
    log.info("%s: %d of %d genes selected (flavor %s, batch-aware %s)", what, mask.sum(), adata.n_vars, flavor,
             by_batch)
    return mask

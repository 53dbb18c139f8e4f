"""The genes a protocol uses (scGPT's gene filter and highly variable genes), below tasks/ and
baselines/: the models and the baselines of one benchmark select genes by this one function."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..keys import LAYER_COUNTS, OBS_BATCH, VAR_MODALITY
from .schema import counts_matrix, log_normalized, x_kind

__all__ = ["select_genes", "select_modality"]

log = logging.getLogger(__name__)


def select_genes(adata, *, n_hvg: int | None = None, min_counts: int = 0, source: str = "dataset") -> np.ndarray:
    """bool (n_vars,): the genes a protocol uses.

    ``min_counts``: genes with fewer total counts dropped first (scGPT's
    ``filter_gene_by_counts``; needs counts). ``n_hvg``: highly variable genes as scGPT selects
    them: ``seurat_v3`` on counts when the dataset has counts, else ``cell_ranger`` on the
    log-normalised values, with ``batch_key="batch"`` when obs has batches. None = all genes.
    """
    import anndata as ad
    import scanpy as sc

    keep = np.ones(adata.n_vars, dtype=bool)
    has_counts = LAYER_COUNTS in adata.layers or x_kind(adata, source=source) == "counts"
    if min_counts:
        if not has_counts:
            raise InputError(f"{source}: filter_gene_by_counts={min_counts} needs raw counts, which it lacks")
        keep &= np.asarray(counts_matrix(adata, source=source).sum(axis=0)).ravel() >= min_counts
    if n_hvg is None:
        return keep
    if n_hvg >= int(keep.sum()):
        return keep
    idx = np.flatnonzero(keep)
    batch = adata.obs[OBS_BATCH].astype(str).to_numpy() if OBS_BATCH in adata.obs else None
    batch_key = "batch" if batch is not None and len(set(batch)) > 1 else None
    obs = pd.DataFrame({"batch": batch} if batch_key else {}, index=adata.obs_names.astype(str))
    if has_counts:
        X = sp.csr_matrix(counts_matrix(adata, source=source), dtype=np.float32)[:, idx]
        tmp = ad.AnnData(X=X, obs=obs)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="seurat_v3", batch_key=batch_key)
    else:
        tmp = ad.AnnData(X=log_normalized(adata, source=source)[:, idx], obs=obs)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="cell_ranger", batch_key=batch_key)
    hvg = np.zeros(adata.n_vars, dtype=bool)
    hvg[idx[tmp.var["highly_variable"].to_numpy()]] = True
    log.info("%s: %d highly variable genes (%s)", source, int(hvg.sum()), "seurat_v3 on counts" if has_counts
             else "cell_ranger on log-normalised values")
    return hvg


def select_modality(adata, modality: str | None, *, source: str = "dataset"):
    """The features of one modality of a multi-omics dataset (var ``modality``, e.g. ``rna`` of
    BMMC CITE-seq), so that models and baselines of an RNA benchmark read genes only (an ADT
    named like a gene, CD4, would otherwise pass for one).

    Parameters
    ----------
    adata
        A standard-schema dataset (n_cells, n_features).
    modality
        The var ``modality`` value to keep; None keeps every feature and returns ``adata`` itself.
    source
        The dataset, for messages.

    Returns
    -------
    AnnData (n_cells, n_selected): a copy holding the selected features (layers and uns kept).
    """
    if modality is None:
        return adata
    if VAR_MODALITY not in adata.var:
        raise InputError(f"{source}: var has no column '{VAR_MODALITY}'; a modality ({modality!r}) can only be "
                         "selected in a multi-omics dataset (set the reference's modality to null)")
    keep = (adata.var[VAR_MODALITY].astype(str) == modality).to_numpy()
    if not keep.any():
        raise InputError(f"{source}: no feature has var['{VAR_MODALITY}'] == {modality!r}; found "
                         f"{sorted(set(adata.var[VAR_MODALITY].astype(str)))}")
    log.info("%s: %d of %d features of modality %r kept", source, int(keep.sum()), adata.n_vars, modality)
    return adata[:, keep].copy()

"""Normalisations of counts shared by the baselines and the tasks (one definition each).

- :func:`log_normalise`: ``log1p(counts / cell total * 1e4)`` per cell (scanpy's
  ``normalize_total`` + ``log1p``), the RNA and ATAC values of the multi-omics baseline and of
  the two-tower task.
- :func:`clr_per_cell`: the per-cell centred log-ratio of ADT counts (Seurat's CLR, margin 2).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import InputError

__all__ = ["TARGET_SUM", "log_normalise", "clr_per_cell"]

#: library size of :func:`log_normalise`
TARGET_SUM = 1e4


def log_normalise(counts, *, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """``log1p(counts / cell total * target_sum)``, per cell (row); all-zero cells stay zero.

    Written by hand (scanpy's ``normalize_total`` + ``log1p`` compute the same) so that no
    AnnData is built for each modality block.

    Parameters
    ----------
    counts
        (n_cells, n_features) dense or sparse non-negative counts.

    Returns
    -------
    float32 CSR (n_cells, n_features).
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    total = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    X = sp.csr_matrix(sp.diags(scale) @ X)
    X.data = np.log1p(X.data)
    return X.astype(np.float32)


def clr_per_cell(counts) -> np.ndarray:
    """Centred log-ratio of ADT counts per cell, Seurat's ``NormalizeData(method="CLR", margin=2)``.

    ``clr[i, j] = log1p(x[i, j] / exp(sum_j log1p(x[i, j]) / n_proteins))``: each cell's counts
    divided by the geometric mean of its (pseudocounted) counts. Written by hand because muon,
    which has it (``muon.prot.pp.clr``), is not a dependency.

    Parameters
    ----------
    counts
        (n_cells, n_proteins) dense or sparse non-negative counts.

    Returns
    -------
    float32 (n_cells, n_proteins), dense (ADT panels have ~10-200 proteins).
    """
    X = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"clr_per_cell: expected a (n_cells, n_proteins) matrix with >= 1 protein, got {X.shape}")
    geo = np.exp(np.log1p(X).mean(axis=1, keepdims=True))
    return np.log1p(X / geo).astype(np.float32)

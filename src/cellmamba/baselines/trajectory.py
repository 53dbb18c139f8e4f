"""The trajectory task's baseline: PCA of the log-normalised expression.

The same PCA as the integration baseline ``pca`` (:func:`cellmamba.baselines.integrate_baseline`):
log1p(x / total x 1e4) over every gene (counts where the dataset has them; TPM / FPKM rescaled per
cell the same way), the genes of :func:`cellmamba.datasets.selection.select_genes` (``n_hvg``
highly variable genes: seurat_v3 on counts, cell_ranger on log-normalised values, within batches
where obs has them), each gene z-scored and clipped at 10, then ``n_comps`` principal components
(exact, seeded). Harmony and scVI are not run: the trajectory datasets have no batches to correct
(HSMM) or are scored on all batches together as the NeurIPS 2021 metric does (BMMC), and HSMM
has no counts for scVI.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from .._util import seed_all
from ..errors import InputError
from ..io import read_h5ad_checked, write_h5ad_atomic
from ..keys import OBSM_EMBEDDING, UNS
from ._common import check_positive_int, parse_settings, settings_dict

__all__ = ["TRAJECTORY_METHODS", "TrajectoryPcaSettings", "trajectory_baseline", "run_trajectory_baseline"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrajectoryPcaSettings:
    """Settings of the trajectory task's ``pca`` baseline."""

    #: highly variable genes (select_genes; None: every gene)
    n_hvg: int | None = 2000
    #: principal components
    n_comps: int = 50

    def __post_init__(self):
        what = "trajectory baseline 'pca'"
        if self.n_hvg is not None:
            check_positive_int(self.n_hvg, key="n_hvg", what=what)
        check_positive_int(self.n_comps, key="n_comps", what=what)


TRAJECTORY_METHODS = {"pca": TrajectoryPcaSettings}


def trajectory_baseline(adata, method: str = "pca", *, seed: int = 0, **settings) -> np.ndarray:
    """Embed every cell with a trajectory baseline.

    Parameters
    ----------
    adata
        A standard-schema dataset (n_cells, n_genes) of one modality.
    method
        ``"pca"`` (:class:`TrajectoryPcaSettings`).
    seed
        Seeds the PCA's start vector.
    **settings
        Fields of :class:`TrajectoryPcaSettings`; an unknown key is an InputError.

    Returns
    -------
    float32 (n_cells, n_comps), cells in dataset order; not normalised.
    """
    from ..datasets.selection import select_genes
    from .integration import PcaSettings, _pca_embedding

    if method not in TRAJECTORY_METHODS:
        raise InputError(f"trajectory baseline: method is {method!r}; expected one of {list(TRAJECTORY_METHODS)}")
    what = f"trajectory baseline {method!r}"
    cfg = parse_settings(TRAJECTORY_METHODS[method], settings, what=what)
    seed_all(seed)
    genes = select_genes(adata, n_hvg=cfg.n_hvg, source=what)
    n_comps = min(cfg.n_comps, adata.n_obs - 1, int(genes.sum()) - 1)
    if n_comps < cfg.n_comps:
        log.info("%s: %d components (%d cells, %d genes) instead of %d", what, n_comps, adata.n_obs,
                 int(genes.sum()), cfg.n_comps)
    pca = PcaSettings(n_comps=n_comps, hvg_by_batch=False)   # log-normalise, z-score, clip at 10: the integration pca
    emb = _pca_embedding(adata, genes, None, pca, seed, what)
    log.info("%s: %d cells, %d of %d genes, %d components", what, adata.n_obs, int(genes.sum()), adata.n_vars,
             emb.shape[1])
    return np.asarray(emb, dtype=np.float32)


def run_trajectory_baseline(dataset: str | os.PathLike, out: str | os.PathLike, *, method: str = "pca",
                            seed: int = 0, settings: dict | None = None, modality: str | None = None):
    """Read a prepared dataset, run :func:`trajectory_baseline`, write the embedding file atomically.

    Parameters
    ----------
    dataset
        results/datasets/<dataset>.h5ad.
    out
        Output h5ad: the dataset's obs_names and obs, X empty (n_cells, 0), ``obsm["X_emb"]``
        float32 (n_cells, n_comps), ``uns["cellmamba"]`` = {method, seed, settings, modality}.
    method, seed, settings
        As :func:`trajectory_baseline`.
    modality
        Keep only the features of this var ``modality`` first (BMMC CITE-seq: ``rna``); None: all.

    Returns
    -------
    The written AnnData.
    """
    import anndata as ad

    from ..datasets.selection import select_modality

    adata = read_h5ad_checked(dataset)
    cells = select_modality(adata, modality, source=str(dataset))
    settings = dict(settings or {})
    emb = trajectory_baseline(cells, method, seed=seed, **settings)
    cfg = parse_settings(TRAJECTORY_METHODS[method], settings, what=f"trajectory baseline {method!r}")
    result = ad.AnnData(X=np.zeros((adata.n_obs, 0), dtype=np.float32), obs=adata.obs.copy())
    result.obsm[OBSM_EMBEDDING] = emb
    result.uns[UNS] = {"method": method, "seed": int(seed), "settings": settings_dict(cfg),
                       "modality": modality or "all"}
    if cfg.n_hvg is None:
        result.uns[UNS]["settings"]["n_hvg"] = "all"
    write_h5ad_atomic(result, out)
    log.info("%s: embedding %s -> %s", method, emb.shape, out)
    return result

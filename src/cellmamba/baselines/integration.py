"""Integration baselines: unintegrated PCA, Harmony on those PCs, scVI on raw counts.

Each returns an embedding of every cell of the dataset, in dataset order, the same cells the
fine-tuned models embed (:func:`cellmamba.tasks.run_integration`); the metrics L2-normalise.

- ``pca``: log-normalised values (:func:`cellmamba.datasets.log_normalized`), optionally
  ``n_hvg`` highly variable genes (scanpy; ``hvg_flavor`` follows the dataset's protocol:
  ``seurat_v3`` on raw counts for PBMC as in scGPT, ``cell_ranger`` on the log-normalised values
  for datasets without counts or with that protocol), scaled to unit variance and clipped at 10
  (scanpy's ``pp.scale(max_value=10)``), then 50 principal components (exact ARPACK, seeded).
- ``harmony``: harmonypy on exactly those PCs with obs ``batch``, seeded (``random_state``).
- ``scvi``: scvi-tools SCVI on the raw counts (:func:`cellmamba.datasets.counts_matrix`; a
  dataset published without counts makes the baseline not applicable: an InputError, never
  counts rebuilt from log values), obs ``batch`` as batch key, the scIB benchmark's settings
  (n_latent 30, n_hidden 128, n_layers 2, negative binomial; Luecken et al. 2022), seeded via
  ``scvi.settings.seed``; ``max_epochs`` None is scvi's own rule min(round(20000 / n_cells *
  400), 400); the demo config sets a small number so it runs fast on a CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._util import seed_all
from ..datasets import counts_matrix, log_normalized, validate_standard
from ..errors import InputError
from ..io import atomic_path, read_h5ad_checked
from ..keys import OBS_BATCH, OBSM_EMBEDDING, UNS
from ._common import (HVG_FLAVORS, check_choice, check_positive_int, parse_settings, reference_pca, select_hvg,
                      settings_dict)

__all__ = ["INTEGRATION_METHODS", "OBSM_EMBEDDING", "PcaSettings", "HarmonySettings", "ScviSettings",
           "integrate_baseline", "run_integration_baseline"]

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class PcaSettings:
    """Settings of the ``pca`` integration baseline (unintegrated)."""

    #: principal components
    n_comps: int = 50
    #: HVG flavour when n_hvg is given: "seurat_v3" (raw counts), "cell_ranger" or "seurat"
    #: (log-normalised values)
    hvg_flavor: str = "seurat_v3"
    #: rank HVGs within each batch (scanpy batch_key="batch"), as scGPT's PBMC protocol
    hvg_by_batch: bool = True
    #: z-score every gene before the PCA
    scale: bool = True
    #: clip the z-scores at +-max_value (None: no clipping)
    max_value: float | None = 10.0

    def __post_init__(self):
        what = f"integration baseline {self._method!r}"
        check_positive_int(self.n_comps, key="n_comps", what=what)
        check_choice(self.hvg_flavor, key="hvg_flavor", what=what, choices=HVG_FLAVORS)
        if self.max_value is not None and not self.max_value > 0:
            raise InputError(f"{what}: setting 'max_value' is {self.max_value!r}; expected a positive number or null")

    _method = "pca"


@dataclasses.dataclass(frozen=True)
class HarmonySettings(PcaSettings):
    """Settings of the ``harmony`` baseline: the PCA's, plus Harmony's own."""

    #: diversity penalty (harmonypy / R harmony default 2)
    theta: float = 2.0
    #: Harmony iterations (harmonypy default 10)
    max_iter_harmony: int = 10

    _method = "harmony"

    def __post_init__(self):
        super().__post_init__()
        check_positive_int(self.max_iter_harmony, key="max_iter_harmony", what="integration baseline 'harmony'")
        if not self.theta >= 0:
            raise InputError(f"integration baseline 'harmony': setting 'theta' is {self.theta!r}; expected >= 0")


@dataclasses.dataclass(frozen=True)
class ScviSettings:
    """Settings of the ``scvi`` baseline (scIB's scVI settings)."""

    #: latent dimensions (scIB 30; scvi-tools' own default is 10)
    n_latent: int = 30
    n_hidden: int = 128
    #: encoder / decoder layers (scIB 2)
    n_layers: int = 2
    #: "nb" (scIB) or "zinb" (scvi-tools' default), "poisson"
    gene_likelihood: str = "nb"
    #: training epochs; None is scvi's rule min(round(20000 / n_cells * 400), 400)
    max_epochs: int | None = None
    batch_size: int = 128
    #: HVG flavour and batch-awareness when n_hvg is given (as PcaSettings)
    hvg_flavor: str = "seurat_v3"
    hvg_by_batch: bool = True
    #: "auto" (a CUDA GPU when there is one, else the CPU), "cpu" or "gpu" ("gpu" without a
    #: CUDA device is an error)
    accelerator: str = "auto"

    def __post_init__(self):
        what = "integration baseline 'scvi'"
        for key in ("n_latent", "n_hidden", "n_layers", "batch_size"):
            check_positive_int(getattr(self, key), key=key, what=what)
        if self.max_epochs is not None:
            check_positive_int(self.max_epochs, key="max_epochs", what=what)
        check_choice(self.gene_likelihood, key="gene_likelihood", what=what, choices=("nb", "zinb", "poisson"))
        check_choice(self.hvg_flavor, key="hvg_flavor", what=what, choices=HVG_FLAVORS)
        check_choice(self.accelerator, key="accelerator", what=what, choices=("auto", "cpu", "gpu"))


INTEGRATION_METHODS = {"pca": PcaSettings, "harmony": HarmonySettings, "scvi": ScviSettings}


def _batches(adata, what: str, *, minimum: int) -> np.ndarray:
    if OBS_BATCH not in adata.obs:
        raise InputError(f"{what}: obs column '{OBS_BATCH}' is required")
    batch = adata.obs[OBS_BATCH].astype(str).to_numpy()
    n = len(np.unique(batch))
    if n < minimum:
        raise InputError(f"{what}: obs['{OBS_BATCH}'] has {n} distinct value(s); this method corrects batches "
                         f"and needs at least {minimum}")
    return batch


def _pca_embedding(adata, genes, n_hvg: int | None, cfg: PcaSettings, seed: int, what: str) -> np.ndarray:
    import scanpy as sc

    X = log_normalized(adata, source=what)  # normalised over every gene, then the columns are selected
    if genes is not None:
        X = X[:, genes]
    elif n_hvg is not None:
        X = X[:, select_hvg(adata, n_hvg, flavor=cfg.hvg_flavor, by_batch=cfg.hvg_by_batch, log_norm=X, what=what)]
    if cfg.scale:
        X = np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
        X = sc.pp.scale(X, zero_center=True, max_value=cfg.max_value, copy=True)
    Z, _, _ = reference_pca(X, None, n_comps=cfg.n_comps, seed=seed, what=what)
    return Z


def _harmony(Z: np.ndarray, batch: np.ndarray, cfg: HarmonySettings, seed: int) -> np.ndarray:
    from harmonypy import run_harmony

    ho = run_harmony(Z.astype(np.float64), pd.DataFrame({OBS_BATCH: batch}), [OBS_BATCH], theta=cfg.theta,
                     max_iter_harmony=cfg.max_iter_harmony, random_state=seed, verbose=False)
    out = np.asarray(ho.Z_corr)
    if out.shape != Z.shape:  # harmonypy <= 0.0.10 returns (n_pcs, n_cells)
        out = out.T
    if out.shape != Z.shape:
        raise RuntimeError(f"harmonypy returned shape {np.asarray(ho.Z_corr).shape} for input {Z.shape}")
    return out.astype(np.float32)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's INFO chatter (device banners, tips) at WARNING while scVI trains; restored after."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _scvi(adata, batch: np.ndarray, genes, n_hvg: int | None, cfg: ScviSettings, seed: int, what: str) -> np.ndarray:
    import anndata as ad

    try:
        counts = counts_matrix(adata, source=what)
    except InputError as exc:
        raise InputError(f"{exc}. The scvi baseline is not applicable to this dataset: scVI models raw counts "
                         f"and the publication provides none (no counts are rebuilt from log values)") from exc
    counts = sp.csr_matrix(counts, dtype=np.float32)
    if genes is not None:
        counts = counts[:, genes]
    elif n_hvg is not None:
        counts = counts[:, select_hvg(adata, n_hvg, flavor=cfg.hvg_flavor, by_batch=cfg.hvg_by_batch, what=what)]
    import scvi  # lazy: slow import, pulls in lightning
    import torch

    if cfg.accelerator == "gpu" and not torch.cuda.is_available():
        raise InputError(f"{what}: setting 'accelerator' is 'gpu' but no CUDA device is available")
    accelerator = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    max_epochs = cfg.max_epochs or max(1, int(min(round(20000 / adata.n_obs * 400), 400)))
    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    data = ad.AnnData(X=counts, obs=pd.DataFrame({OBS_BATCH: pd.Categorical(batch)},
                                                 index=adata.obs_names.astype(str)))
    scvi.model.SCVI.setup_anndata(data, batch_key=OBS_BATCH)
    model = scvi.model.SCVI(data, n_hidden=cfg.n_hidden, n_latent=cfg.n_latent, n_layers=cfg.n_layers,
                            gene_likelihood=cfg.gene_likelihood)
    log.info("%s: %d cells x %d genes, %d batches, %d epochs on %s", what, data.n_obs, data.n_vars,
             len(np.unique(batch)), max_epochs, accelerator)
    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        model.train(max_epochs=max_epochs, accelerator=accelerator, devices=1, batch_size=cfg.batch_size,
                    enable_progress_bar=False, enable_model_summary=False)
    elbo = model.history.get("elbo_train")
    if elbo is not None and len(elbo):
        log.info("%s: final training ELBO %.4g", what, float(np.asarray(elbo).ravel()[-1]))
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def integrate_baseline(adata, method: str, *, seed: int, n_hvg: int | None = None, genes: np.ndarray | None = None,
                       **settings: Any) -> np.ndarray:
    """Embed every cell with an integration baseline.

    Parameters
    ----------
    adata
        Standard-schema dataset (n_cells, n_genes) with obs ``batch`` (and ``cell_type``).
    method
        ``"pca"`` (:class:`PcaSettings`), ``"harmony"`` (:class:`HarmonySettings`) or
        ``"scvi"`` (:class:`ScviSettings`; raises InputError, "not applicable", for a dataset
        without raw counts).
    seed
        Seeds the PCA start vector, Harmony's k-means and scVI (``scvi.settings.seed``).
    n_hvg
        Select this many highly variable genes first (``hvg_flavor``); None uses every gene.
    genes
        bool (n_genes,): use exactly these genes instead (e.g. the models' selection,
        :func:`cellmamba.datasets.selection.select_genes`); exclusive with ``n_hvg``. Log-normalisation is
        computed over every gene before the columns are selected.
    **settings
        Fields of the method's settings class; an unknown key is an InputError.

    Returns
    -------
    float32 (n_cells, d): the embedding of every cell in dataset order; d = n_comps (pca,
    harmony) or n_latent (scvi). Not normalised.
    """
    seed_all(seed)
    if method not in INTEGRATION_METHODS:
        raise InputError(f"integration baseline: method is {method!r}; expected one of {list(INTEGRATION_METHODS)}")
    what = f"integration baseline {method!r}"
    cfg = parse_settings(INTEGRATION_METHODS[method], settings, what=what)
    if n_hvg is not None:
        check_positive_int(n_hvg, key="n_hvg", what=what)
    validate_standard(adata, "integration", source=what)
    if genes is not None:
        if n_hvg is not None:
            raise InputError(f"{what}: give either n_hvg ({n_hvg}) or a gene mask, not both")
        genes = np.asarray(genes)
        if genes.dtype != bool or genes.shape != (adata.n_vars,) or not genes.any():
            raise InputError(f"{what}: genes must be a boolean mask of shape ({adata.n_vars},) selecting at least "
                             f"one gene; got dtype {genes.dtype}, shape {genes.shape}")
    log.info("%s: %d cells, %d genes (%s), seed %d, settings %s", what, adata.n_obs, adata.n_vars,
             f"{int(genes.sum())} selected" if genes is not None else f"n_hvg {n_hvg}", seed, settings_dict(cfg))
    if method == "pca":
        emb = _pca_embedding(adata, genes, n_hvg, cfg, seed, what)
    elif method == "harmony":
        batch = _batches(adata, what, minimum=2)
        emb = _harmony(_pca_embedding(adata, genes, n_hvg, cfg, seed, what), batch, cfg, seed)
    else:
        emb = _scvi(adata, _batches(adata, what, minimum=2), genes, n_hvg, cfg, seed, what)
    if emb.shape[0] != adata.n_obs or not np.all(np.isfinite(emb)):
        raise RuntimeError(f"{what}: embedding of shape {emb.shape} is not finite for {adata.n_obs} cells")
    return emb


def run_integration_baseline(dataset: str | os.PathLike, embedding: str | os.PathLike, *, method: str, seed: int,
                             settings: dict | None = None, genes: dict | None = None):
    """Read a standard-schema h5ad, run :func:`integrate_baseline`, write the embedding atomically.

    Parameters
    ----------
    dataset
        Path of the dataset (.h5ad).
    embedding
        Output .h5ad: the dataset's obs_names and obs (``cell_type``, ``batch``, ...), X empty
        (n_cells, 0), ``obsm["X_emb"]`` float32 (n_cells, d), ``uns["cellmamba"]`` = {method,
        seed, settings (resolved, with n_hvg), genes, n_genes_selected}.
    method, seed
        As :func:`integrate_baseline`.
    settings
        The method's settings as a dict; may hold ``n_hvg``.
    genes
        The run's gene protocol ``{"n_hvg": int | None, "min_counts": int}``, the rule's
        ``params.genes``: the genes are then chosen by :func:`cellmamba.datasets.selection.select_genes`,
        the function that chooses the fine-tuned models' genes, so baselines and models see the
        same genes. Exclusive with ``settings["n_hvg"]``.

    Returns
    -------
    The written AnnData.
    """
    import anndata as ad

    what = f"integration baseline {method!r}"
    settings = dict(settings or {})
    n_hvg = settings.pop("n_hvg", None)
    adata = read_h5ad_checked(dataset)
    mask = None
    if genes:
        if n_hvg is not None:
            raise InputError(f"{what}: settings n_hvg ({n_hvg}) and the gene protocol {genes} both select genes; "
                             "give one")
        unknown = sorted(set(genes) - {"n_hvg", "min_counts"})
        if unknown:
            raise InputError(f"{what}: gene protocol keys {unknown} unknown; expected n_hvg, min_counts")
        from ..datasets.selection import select_genes  # the models' gene selection

        mask = select_genes(adata, n_hvg=genes.get("n_hvg"), min_counts=genes.get("min_counts") or 0,
                            source=str(dataset))
    emb = integrate_baseline(adata, method, seed=seed, n_hvg=n_hvg, genes=mask, **settings)
    cfg = parse_settings(INTEGRATION_METHODS[method], settings, what=what)
    out = ad.AnnData(X=np.zeros((adata.n_obs, 0), dtype=np.float32), obs=adata.obs.copy())
    out.obsm[OBSM_EMBEDDING] = emb.astype(np.float32)
    out.uns[UNS] = {"method": method, "seed": int(seed), "settings": {**settings_dict(cfg), "n_hvg": n_hvg},
                    "genes": dict(genes or {}),
                    "n_genes_selected": int(mask.sum()) if mask is not None else adata.n_vars if n_hvg is None
                    else int(n_hvg)}
    with atomic_path(embedding) as tmp:
        out.write_h5ad(tmp)
    log.info("%s: embedding %s -> %s", what, emb.shape, embedding)
    return out

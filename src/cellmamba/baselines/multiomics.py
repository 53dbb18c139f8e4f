"""Multi-omics baselines: PCA of each modality then canonical correlation analysis (PCA + CCA), and
scvi-tools' MULTIVI (RNA + ATAC) and TOTALVI (RNA + protein).

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

scvi-tools methods (:func:`multivi`, :func:`totalvi`), trained on the raw counts
(``layers["counts"]``) of both modalities with obs ``batch`` as batch key, seeded through
``scvi.settings.seed``:

- ``multivi`` (RNA + ATAC only): ``scvi.model.MULTIVI`` on the genes then the peaks; the
  rna / atac embeddings are ``get_latent_representation(modality="expression")`` and
  ``(modality="accessibility")``, the posterior means of the two modality encoders, so FOSCTTM,
  mixing and label transfer are computed on two per-modality embeddings as for the towers.
- ``totalvi`` (RNA + protein only): ``scvi.model.TOTALVI`` gives ONE joint latent per cell
  (``get_latent_representation()``), not one per modality. It is written as a joint file
  (:func:`write_joint_embedding`: ``obsm["X_emb"]``, ``uns["cellmamba"]["joint"] = True``);
  the cross-modal metrics, which compare two modalities' embeddings, are not computed for it
  (:func:`cellmamba.metrics.score_paired_embedding_file`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from .._util import seed_all
from ..errors import InputError
from ..keys import LAYER_COUNTS, OBS_BATCH, OBSM_EMBEDDING, UNS
from ..keys import VAR_MODALITY as _VAR_MODALITY
from ..normalisation import clr_per_cell, log_normalise
from ._common import check_choice, check_positive_int, parse_settings, reference_pca, settings_dict

__all__ = ["MULTIOMICS_METHODS", "METHOD_MODALITIES", "JOINT_METHODS", "MODALITY_NORMALISATION", "PcaCcaSettings",
           "MultiviSettings", "TotalviSettings", "modality_matrices", "clr_per_cell", "log_normalise", "pca_cca",
           "canonical_correlations", "multivi", "totalvi", "write_joint_embedding", "run_multiomics_baseline",
           "run_multiomics_baseline_files"]

log = logging.getLogger(__name__)

MULTIOMICS_METHODS = ("pca_cca", "multivi", "totalvi")
#: the modalities each method models (None: any two)
METHOD_MODALITIES = {"pca_cca": None, "multivi": ("rna", "atac"), "totalvi": ("rna", "protein")}
#: methods that give one joint latent per cell (a joint file), not one embedding per modality
JOINT_METHODS = ("totalvi",)
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


@dataclasses.dataclass(frozen=True)
class PcaCcaSettings:
    """Settings of the ``pca_cca`` baseline (:func:`pca_cca`)."""

    #: principal components per modality
    n_pcs: int = 50
    #: canonical pairs kept (the shared space)
    n_components: int = 20

    def __post_init__(self):
        for key in ("n_pcs", "n_components"):
            check_positive_int(getattr(self, key), key=key, what="multi-omics baseline 'pca_cca'")


_ACCELERATORS = ("auto", "cpu", "gpu")


class _ScviSettings:
    """The checks of the scvi-tools baselines' settings: ``n_latent``, ``max_epochs`` and
    ``batch_size`` positive integers (None where the class's ``OPTIONAL`` allows scvi's own rule)."""

    METHOD: ClassVar[str]
    OPTIONAL: ClassVar[tuple[str, ...]]

    def __post_init__(self):
        what = f"multi-omics baseline '{self.METHOD}'"
        for key in ("n_latent", "max_epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None or key not in self.OPTIONAL:
                check_positive_int(value, key=key, what=what)
        check_choice(self.accelerator, key="accelerator", what=what, choices=_ACCELERATORS)


@dataclasses.dataclass(frozen=True)
class MultiviSettings(_ScviSettings):
    """Settings of the ``multivi`` baseline (scvi-tools' defaults unless stated)."""

    METHOD: ClassVar[str] = "multivi"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("n_latent",)
    #: latent dimensions; None is scvi's default (MULTIVAE: sqrt of the encoder width)
    n_latent: int | None = None
    #: training epochs (scvi's default 500, with its early stopping on the validation ELBO)
    max_epochs: int = 500
    #: cells per step (scvi's default)
    batch_size: int = 128
    #: "auto" (a CUDA GPU when there is one, else the CPU), "cpu" or "gpu"
    accelerator: str = "auto"


@dataclasses.dataclass(frozen=True)
class TotalviSettings(_ScviSettings):
    """Settings of the ``totalvi`` baseline (scvi-tools' defaults unless stated)."""

    METHOD: ClassVar[str] = "totalvi"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("max_epochs",)
    #: latent dimensions (scvi's default 20)
    n_latent: int = 20
    #: training epochs; None is scvi's rule min(round(20000 / n_cells * 400), 400), early stopping on
    max_epochs: int | None = None
    #: cells per step (scvi's default)
    batch_size: int = 256
    #: "auto" (a CUDA GPU when there is one, else the CPU), "cpu" or "gpu"
    accelerator: str = "auto"


METHOD_SETTINGS = {"pca_cca": PcaCcaSettings, "multivi": MultiviSettings, "totalvi": TotalviSettings}


def _modalities(adata, source: str) -> np.ndarray:
    if _VAR_MODALITY not in adata.var:
        raise InputError(f"{source}: var has no column {_VAR_MODALITY!r} (each feature's modality); read the file "
                         "with read_bmmc, which adds it; found " + str(list(adata.var.columns)))
    return adata.var[_VAR_MODALITY].astype(str).to_numpy()


def _check_method_modalities(method: str, mods: list[str], source: str) -> None:
    """InputError unless ``mods`` are the modalities ``method`` models (:data:`METHOD_MODALITIES`)."""
    want = METHOD_MODALITIES[method]
    if want is None:
        return
    if sorted(mods) != sorted(want):
        others = [m for m, w in METHOD_MODALITIES.items() if w is None or sorted(w) == sorted(mods)]
        raise InputError(f"multi-omics baseline {method!r}: {source} holds modalities {mods}; {method} supports "
                         f"only {' + '.join(want)} datasets (methods for {' + '.join(mods) or 'these'}: {others})")


def _scvi_counts(adata, mod: str, source: str):
    """(n_cells, n_features) float32 CSR raw counts of one modality, and its feature names."""
    if LAYER_COUNTS not in adata.layers:
        raise InputError(f"{source}: layer {LAYER_COUNTS!r} (raw counts) missing; scvi-tools models raw counts; "
                         f"found layers {list(adata.layers)}")
    cols = np.flatnonzero(_modalities(adata, source) == mod)
    X = sp.csr_matrix(adata.layers[LAYER_COUNTS][:, cols], dtype=np.float32)
    if X.data.size and (X.data.min() < 0 or not np.isfinite(X.data).all()):
        raise InputError(f"{source}: layer {LAYER_COUNTS!r} holds negative or non-finite values; expected raw counts")
    return X, adata.var_names[cols].to_numpy().astype(str)


def _scvi_obs(adata, source: str):
    import pandas as pd

    if OBS_BATCH not in adata.obs:
        raise InputError(f"{source}: obs column {OBS_BATCH!r} (the batch key of the scvi-tools models) missing")
    batch = adata.obs[OBS_BATCH].astype(str).to_numpy()
    return pd.DataFrame({OBS_BATCH: pd.Categorical(batch)}, index=adata.obs_names.astype(str))


def _accelerator(requested: str, what: str) -> str:
    import torch

    if requested == "gpu" and not torch.cuda.is_available():
        raise InputError(f"{what}: setting 'accelerator' is 'gpu' but no CUDA device is available")
    return requested if requested != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")


def _scvi_setup(adata, method: str, other: str, settings, *, seed: int, source: str):
    """What both scvi-tools baselines do first: check the dataset's modalities for ``method``, take
    the raw counts of rna and of ``other``, resolve the accelerator, import and seed scvi.

    Returns (scvi module, accelerator, rna counts, (``other`` counts, ``other`` feature names))."""
    _check_method_modalities(method, list(dict.fromkeys(_modalities(adata, source))), source)
    rna, _ = _scvi_counts(adata, "rna", source)
    counts = _scvi_counts(adata, other, source)
    accelerator = _accelerator(settings.accelerator, f"{method} on {source}")
    import scvi  # lazy: slow import, pulls in lightning

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    return scvi, accelerator, rna, counts


def _train(model, *, max_epochs, batch_size: int, accelerator: str, what: str) -> dict[str, Any]:
    """Train an scvi-tools model quietly; returns the epochs run and the last training ELBO."""
    from .integration import _quiet_lightning

    with warnings.catch_warnings(), _quiet_lightning():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        model.train(max_epochs=max_epochs, accelerator=accelerator, devices=1, batch_size=batch_size,
                    enable_progress_bar=False, enable_model_summary=False)
    elbo = np.asarray(model.history.get("elbo_train", [])).ravel()
    out = {"epochs": int(len(elbo)), "elbo_train": float(elbo[-1]) if len(elbo) else float("nan")}
    log.info("%s: %d epochs, final training ELBO %.4g", what, out["epochs"], out["elbo_train"])
    return out


def multivi(adata, *, seed: int = 0, settings: MultiviSettings = MultiviSettings(),
            source: str = "dataset") -> dict[str, Any]:
    """scvi-tools MULTIVI on a paired RNA + ATAC dataset: one latent per modality encoder.

    Parameters
    ----------
    adata
        (n_cells, n_features) paired dataset (var ``modality`` ``rna`` and ``atac``, raw counts in
        ``layers["counts"]``, obs ``batch``).
    seed
        ``scvi.settings.seed`` (weights, the train / validation split, the batches).
    settings
        :class:`MultiviSettings`.

    Returns
    -------
    dict: ``embeddings`` {``rna``: float32 (n_cells, n_latent) ``modality="expression"``,
    ``atac``: float32 (n_cells, n_latent) ``modality="accessibility"``}, posterior means;
    ``n_features`` {m: int}; ``n_latent`` (resolved), ``epochs`` (run), ``elbo_train``.
    """
    import anndata as ad
    import mudata

    what = f"multivi on {source}"
    scvi, accelerator, rna, (atac, _) = _scvi_setup(adata, "multivi", "atac", settings, seed=seed, source=source)
    # scvi-tools 1.4 sets MULTIVI up from a MuData only (setup_anndata is deprecated and registers nothing)
    obs = _scvi_obs(adata, source)
    data = mudata.MuData({"rna": ad.AnnData(X=rna, obs=obs.copy()), "atac": ad.AnnData(X=atac, obs=obs.copy())})
    data.obs[OBS_BATCH] = obs[OBS_BATCH]
    scvi.model.MULTIVI.setup_mudata(data, batch_key=OBS_BATCH,
                                    modalities={"rna_layer": "rna", "atac_layer": "atac", "batch_key": "rna"})
    model = scvi.model.MULTIVI(data, n_latent=settings.n_latent)
    n_latent = int(model.module.n_latent)
    log.info("%s: %d cells x (%d genes + %d peaks), %d batches, n_latent %d, at most %d epochs on %s", what,
             data.n_obs, rna.shape[1], atac.shape[1], obs[OBS_BATCH].nunique(), n_latent, settings.max_epochs,
             accelerator)
    run = _train(model, max_epochs=settings.max_epochs, batch_size=settings.batch_size, accelerator=accelerator,
                 what=what)
    emb = {"rna": model.get_latent_representation(modality="expression"),
           "atac": model.get_latent_representation(modality="accessibility")}
    return {"embeddings": {m: np.asarray(e, dtype=np.float32) for m, e in emb.items()},
            "n_features": {"rna": rna.shape[1], "atac": atac.shape[1]}, "n_latent": n_latent, **run}


def totalvi(adata, *, seed: int = 0, settings: TotalviSettings = TotalviSettings(),
            source: str = "dataset") -> dict[str, Any]:
    """scvi-tools TOTALVI on a paired RNA + protein (CITE-seq) dataset: one joint latent per cell.

    Parameters
    ----------
    adata
        (n_cells, n_features) paired dataset (var ``modality`` ``rna`` and ``protein``, raw counts in
        ``layers["counts"]``, obs ``batch``).
    seed
        ``scvi.settings.seed``.
    settings
        :class:`TotalviSettings`.

    Returns
    -------
    dict: ``embedding`` float32 (n_cells, n_latent), the posterior mean of the joint latent;
    ``n_features`` {m: int}; ``n_latent``, ``epochs`` (run), ``elbo_train``.
    """
    import anndata as ad
    import pandas as pd

    what = f"totalvi on {source}"
    scvi, accelerator, rna, (protein, names) = _scvi_setup(adata, "totalvi", "protein", settings, seed=seed,
                                                           source=source)
    data = ad.AnnData(X=rna, obs=_scvi_obs(adata, source))
    data.obsm["protein_expression"] = pd.DataFrame(protein.toarray(), index=data.obs_names, columns=names)
    scvi.model.TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein_expression", batch_key=OBS_BATCH)
    model = scvi.model.TOTALVI(data, n_latent=settings.n_latent)
    log.info("%s: %d cells x (%d genes + %d proteins), %d batches, n_latent %d, max_epochs %s on %s", what,
             data.n_obs, rna.shape[1], protein.shape[1], data.obs[OBS_BATCH].nunique(), settings.n_latent,
             settings.max_epochs or "scvi's rule", accelerator)
    run = _train(model, max_epochs=settings.max_epochs, batch_size=settings.batch_size, accelerator=accelerator,
                 what=what)
    return {"embedding": np.asarray(model.get_latent_representation(), dtype=np.float32),
            "n_features": {"rna": rna.shape[1], "protein": protein.shape[1]}, "n_latent": int(settings.n_latent),
            **run}


def run_multiomics_baseline(adata, *, method: str = "pca_cca", seed: int = 0, source: str = "dataset",
                            **settings: Any) -> dict[str, Any]:
    """Embed a paired dataset with a multi-omics baseline.

    Parameters
    ----------
    adata
        (n_cells, n_features) paired dataset as :func:`cellmamba.datasets.read_bmmc` returns it
        (exactly two modalities in var ``modality``; raw counts in ``layers["counts"]``; obs
        ``batch`` for the scvi-tools methods).
    method
        ``"pca_cca"`` (:func:`pca_cca` on :func:`modality_matrices`; any two modalities),
        ``"multivi"`` (:func:`multivi`; RNA + ATAC) or ``"totalvi"`` (:func:`totalvi`; RNA +
        protein). Another pair of modalities is an InputError naming the method.
    seed
        Seeds the PCA start vectors / ``scvi.settings.seed``.
    source
        Names the dataset in error messages.
    **settings
        Fields of the method's settings class (:class:`PcaCcaSettings`, :class:`MultiviSettings`,
        :class:`TotalviSettings`); an unknown key is an InputError.

    Returns
    -------
    dict: ``method``; ``modalities`` [m1, m2] (var order, e.g. ``["rna", "protein"]``);
    ``joint`` (bool); ``settings`` (resolved, plain dict); ``n_features`` {m: int}. Per-modality
    methods (joint False): ``embeddings`` {m1: float32 (n_cells, k), m2: float32 (n_cells, k)},
    row i = cell ``obs_names[i]`` in both. A joint method (``totalvi``): ``embedding`` float32
    (n_cells, k), one row per cell. pca_cca adds ``canonical_correlations`` float64 (k,) and
    ``normalisation`` {m: "log1p_norm" | "clr"}; settings ``n_components`` is k after capping. The
    scvi-tools methods add ``epochs`` (run), ``elbo_train`` and ``scvi_version``.
    """
    seed_all(seed)
    if method not in MULTIOMICS_METHODS:
        raise InputError(f"multi-omics baseline: method is {method!r}; expected one of {list(MULTIOMICS_METHODS)}")
    cfg = parse_settings(METHOD_SETTINGS[method], settings, what=f"multi-omics baseline {method!r}")
    mods = list(dict.fromkeys(_modalities(adata, source)))
    if len(mods) != 2:
        raise InputError(f"{source}: {len(mods)} modalities {mods}; the {method} baseline pairs exactly two modalities")
    _check_method_modalities(method, mods, source)
    out = {"method": method, "modalities": mods, "joint": method in JOINT_METHODS}
    if method == "pca_cca":
        mats = modality_matrices(adata, source=source)
        (m1, (x1, f1)), (m2, (x2, f2)) = mats.items()
        u, v = pca_cca(x1, x2, n_pcs=cfg.n_pcs, n_components=cfg.n_components, seed=seed)
        return {**out, "embeddings": {m1: u.astype(np.float32), m2: v.astype(np.float32)},
                "canonical_correlations": canonical_correlations(u, v), "n_features": {m1: len(f1), m2: len(f2)},
                "normalisation": {m1: MODALITY_NORMALISATION[m1], m2: MODALITY_NORMALISATION[m2]},
                "settings": {"n_pcs": int(cfg.n_pcs), "n_components": int(u.shape[1])}}
    import scvi

    fit = (multivi if method == "multivi" else totalvi)(adata, seed=seed, settings=cfg, source=source)
    resolved = {**settings_dict(cfg), "n_latent": fit.pop("n_latent")}
    if method == "multivi":  # the per-modality embeddings in var order
        fit["embeddings"] = {m: fit["embeddings"][m] for m in mods}
    return {**out, **fit, "settings": resolved, "scvi_version": scvi.__version__}


def write_joint_embedding(obs, embedding, path: str | os.PathLike, *, info: dict) -> None:
    """One joint latent per cell of a paired dataset (a joint method, e.g. totalVI) as h5ad (no X).

    Parameters
    ----------
    obs
        DataFrame of the cells (obs_names and columns kept, e.g. ``cell_type``).
    embedding
        (n_cells, n_dims) joint latent, row i = cell i.
    path
        Output .h5ad (written atomically): ``obsm["X_emb"]`` float32 (the integration files' key,
        so an embedding UMAP draws it as one embedding per cell), ``uns["cellmamba"]`` = ``info``
        plus ``joint`` True and ``modalities`` (the two modalities the latent models).
    info
        Must name the ``method`` and the ``modalities``.
    """
    import anndata as ad

    from ..io import _plain, write_h5ad_atomic

    emb = np.asarray(embedding, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(obs):
        raise InputError(f"{path}: the joint embedding has shape {emb.shape}; expected ({len(obs)}, n_dims)")
    if not info.get("method") or len(info.get("modalities", [])) != 2:
        raise InputError(f"{path}: a joint embedding needs info['method'] and info['modalities'] (two); got {info}")
    out = ad.AnnData(obs=obs.copy(), obsm={OBSM_EMBEDDING: emb})
    out.uns[UNS] = _plain({**info, "joint": True})
    write_h5ad_atomic(out, path)


def run_multiomics_baseline_files(dataset: str | os.PathLike, embedding: str | os.PathLike, *, method: str,
                                  seed: int, settings: dict | None = None) -> dict[str, Any]:
    """Read a paired standard-schema h5ad, run :func:`run_multiomics_baseline`, write the embedding file.

    Parameters
    ----------
    dataset
        Path of the dataset (.h5ad) as written from :func:`cellmamba.datasets.read_bmmc`'s output.
    embedding
        Output .h5ad (written atomically). Per-modality methods (pca_cca, multivi):
        :func:`cellmamba.io.write_paired_embedding`, the dataset's obs and
        ``obsm["X_<method>_<modality>"]`` float32 (n_cells, k) for both modalities. A joint method
        (totalvi): :func:`write_joint_embedding`, ``obsm["X_emb"]`` float32 (n_cells, k) and
        ``uns["cellmamba"]["joint"]`` True. ``uns["cellmamba"]`` holds method, seed, joint,
        settings (resolved), modalities, n_features, and per method canonical correlations and
        normalisation (pca_cca) or the scvi-tools version, epochs run and last training ELBO.
    method, seed
        As :func:`run_multiomics_baseline`.
    settings
        The method's settings (config ``evaluation.multiomics.<method>``); an unknown key is an
        InputError.

    Returns
    -------
    The :func:`run_multiomics_baseline` dict.
    """
    from ..io import read_h5ad_checked, write_paired_embedding

    adata = read_h5ad_checked(dataset)
    out = run_multiomics_baseline(adata, method=method, seed=seed, source=str(dataset), **dict(settings or {}))
    info = {"method": method, "seed": int(seed), "joint": out["joint"], "settings": out["settings"],
            "n_features": out["n_features"]}
    for key in ("canonical_correlations", "normalisation", "scvi_version", "epochs", "elbo_train"):
        if key in out:
            info[key] = out[key]
    if out["joint"]:
        write_joint_embedding(adata.obs, out["embedding"], embedding, info={**info, "modalities": out["modalities"]})
        shapes = {"joint": out["embedding"].shape}
    else:
        write_paired_embedding(adata.obs, out["embeddings"], embedding, info=info)
        shapes = {m: e.shape for m, e in out["embeddings"].items()}
    log.info("multi-omics baseline %s: %s -> %s", method, shapes, embedding)
    return out

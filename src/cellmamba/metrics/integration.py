"""Integration metrics through scib 1.1.x, defined once so every method is scored the same way.

Follows DESIGN.md "Metrics" and scGPT / SC-MAMBA2 (``eval_scib_metrics``, DATASETS.md §0.2):
the embedding of ALL cells is L2-normalised per cell, then scored with scib's own functions
and the argument choices in :data:`SCIB`. Differences from scGPT's single
``scib.metrics.metrics`` call, all deliberate and listed here:

- every scib metric of DESIGN.md that runs without R is computed, not only NMI / ARI / ASW / PCR /
  graph connectivity: isolated labels, iLISI / cLISI too;
- kBET is not computed and has no column: scib's ``kBET`` calls the kBET R package through
  rpy2, and no env of the workflow has R. scib-metrics' JAX port would be the maintained
  Python route, at the cost of a JAX stack in the eval env; neither scGPT nor SC-MAMBA2 reports
  kBET. A column that can never be filled is not kept;
- the kNN graph (15 neighbours, as scib recomputes it) is built once, seeded, and shared by
  clustering, graph connectivity and LISI; Leiden gets ``random_state=seed``;
- LISI scores every cell (no subsampling): the helper's subsampling draws from an unseeded
  ``std::random_device``, so scib's default 50 % would make the score irreproducible;
- PCR compares against the unintegrated log-normalised expression (``unintegrated``), scGPT
  passes the same object twice.
"""
from __future__ import annotations

import dataclasses
import logging
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..keys import OBS_BATCH, OBS_CELL_TYPE, OBSM_EMBEDDING
from ._common import Scores, as_labels, as_matrix, quiet_stdout

__all__ = ["ScibSettings", "SCIB", "INTEGRATION_METRICS", "METRICS", "score_integration", "cluster_agreement", "ilisi",
           "clisi", "l2_normalize", "score_embedding_file", "EMBEDDING_KEY"]

log = logging.getLogger(__name__)

#: the metric names :func:`score_integration` returns, in table order -> direction (:mod:`.rows`)
METRICS = dict.fromkeys(("avg_bio", "avg_batch", "nmi", "ari", "asw_cell", "isolated_label_f1", "isolated_label_asw",
                         "asw_batch", "graph_connectivity", "pcr", "ilisi", "clisi"), "higher")
#: the metric names :func:`score_integration` returns, in table order
INTEGRATION_METRICS = tuple(METRICS)

_EMB = OBSM_EMBEDDING   # obsm key of the (normalised) embedding inside the scoring copy
_CLUSTER = "cluster"    # obs key of the optimal Leiden clustering (scib.metrics.metrics' default)


@dataclasses.dataclass(frozen=True)
class ScibSettings:
    """Every argument cellmamba passes to scib (scib 1.1.x defaults unless noted)."""

    #: kNN graph on the embedding: scib's cluster_optimal_resolution / recompute_knn use
    #: ``sc.pp.neighbors`` with scanpy's default 15 neighbours
    n_neighbors: int = 15
    #: Leiden resolutions scanned for the NMI-optimal clustering: get_resolutions(n=10, max=2)
    resolutions: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
    #: Leiden implementation (scib 1.1.x era default of sc.tl.leiden)
    leiden_flavor: str = "leidenalg"
    #: NMI implementation of scib.metrics.nmi (sklearn, arithmetic mean normalisation)
    nmi_implementation: str = "arithmetic"
    #: distance for silhouette (ASW cell type, batch ASW, isolated-label ASW)
    silhouette_metric: str = "euclidean"
    #: isolated labels: None = labels present in the fewest batches (scib's default)
    iso_threshold: int | None = None
    #: PC regression: components and regression backend of scib.metrics.pcr_comparison
    pcr_n_comps: int = 50
    pcr_linreg_method: str = "numpy"
    #: graph LISI: neighbourhood size k0 (scib default 90); scores every cell (see module doc)
    lisi_k0: int = 90


#: the settings used for every reported number
SCIB = ScibSettings()


def l2_normalize(embedding) -> np.ndarray:
    """Divide each row by its Euclidean norm (scGPT / SC-MAMBA2 do this before scib).

    Parameters
    ----------
    embedding
        (n_cells, n_dims) array.

    Returns
    -------
    numpy.ndarray
        (n_cells, n_dims) float32, every row of unit length.
    """
    emb = as_matrix(embedding, name="embedding")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norm == 0).any():
        raise InputError(f"embedding: {int((norm == 0).sum())} cells have an all-zero embedding; "
                         "it cannot be L2-normalised")
    return (emb / norm).astype(np.float32)


def _scoring_copy(adata, embed_key, *, label_key, batch_key, normalize):
    """A small AnnData (no X): obs label/batch as categories, obsm['X_emb'] = the embedding."""
    import anndata as ad

    if embed_key not in adata.obsm:
        raise InputError(f"obsm['{embed_key}'] (the embedding to score) is missing; found {list(adata.obsm)}")
    obs = {}
    for key in dict.fromkeys([label_key, batch_key]):
        if key is None:
            continue
        if key not in adata.obs:
            raise InputError(f"obs['{key}'] is required for integration metrics; found {list(adata.obs.columns)}")
        obs[key] = pd.Categorical(as_labels(adata.obs[key], name=f"obs['{key}']"))
    emb = as_matrix(adata.obsm[embed_key], name=f"obsm['{embed_key}']")
    emb = l2_normalize(emb) if normalize else emb.astype(np.float32)
    return ad.AnnData(obs=pd.DataFrame(obs, index=adata.obs_names.copy()), obsm={_EMB: emb})


def _neighbors(work, *, settings: ScibSettings, seed: int) -> None:
    import scanpy as sc

    if work.n_obs <= settings.n_neighbors:
        raise InputError(f"{work.n_obs} cells: integration metrics need more cells than "
                         f"n_neighbors={settings.n_neighbors}")
    sc.pp.neighbors(work, n_neighbors=settings.n_neighbors, use_rep=_EMB, random_state=seed)


def _graph_lisi(work, obs_key: str, *, k0: int) -> np.ndarray:
    """Per-cell graph LISI of ``obs[obs_key]`` on ``work``'s kNN graph.

    scib's ``lisi_graph_py`` with the helper's path as an argument (scib hard-codes the path
    beside its module, see :mod:`._lisi_build`), its exit status checked, and no subsampling.
    The Simpson index itself is scib's ``compute_simpson_index_graph``.
    """
    from scib.metrics.lisi import compute_simpson_index_graph
    from scipy.io import mmwrite

    from ._lisi_build import LisiBuildError, lisi_binary

    binary = lisi_binary()
    labels = pd.Categorical(work.obs[obs_key])
    conn = work.obsp["connectivities"].tocsr(copy=True)
    conn.data = np.maximum(conn.data, 3e-308)   # the helper cannot parse smaller doubles
    with tempfile.TemporaryDirectory(prefix="cellmamba_lisi_") as tmp:
        prefix = str(Path(tmp) / "graph_lisi")
        mmwrite(prefix + "_input.mtx", conn, symmetry="general")
        cmd = [str(binary), prefix + "_input.mtx", prefix, str(k0), "1", "100"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LisiBuildError(f"LISI helper failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
        with quiet_stdout(log):
            simpson = compute_simpson_index_graph(
                file_prefix=prefix, batch_labels=np.asarray(labels.codes), n_batches=len(labels.categories),
                n_neighbors=k0, perplexity=np.floor(k0 / 3))
    return 1.0 / simpson


def _ilisi_from_graph(work, batch_key, *, k0):
    n = work.obs[batch_key].nunique()
    if n < 2:
        return float("nan")
    return float((np.nanmedian(_graph_lisi(work, batch_key, k0=k0)) - 1) / (n - 1))


def _clisi_from_graph(work, label_key, *, k0):
    n = work.obs[label_key].nunique()
    if n < 2:
        return float("nan")
    return float((n - np.nanmedian(_graph_lisi(work, label_key, k0=k0))) / (n - 1))


def ilisi(adata, embed_key: str, *, batch_key: str = OBS_BATCH, k0: int = SCIB.lisi_k0,
          n_neighbors: int = SCIB.n_neighbors, seed: int = 0) -> float:
    """Graph iLISI of scib (median per-cell LISI of batches, scaled to [0, 1]; 1 = well mixed).

    Parameters
    ----------
    adata
        AnnData with ``obsm[embed_key]`` (n_cells, n_dims) and ``obs[batch_key]``.
    embed_key
        Embedding to score (used as given, not normalised).
    batch_key, k0, n_neighbors, seed
        Batch column; LISI neighbourhood size; kNN graph size and seed.

    Returns
    -------
    float
        (median LISI - 1) / (n_batches - 1); NaN with a single batch.

    Raises
    ------
    cellmamba.metrics.LisiBuildError
        scib's LISI helper does not run and cannot be rebuilt (no C++ compiler).
    """
    work = _scoring_copy(adata, embed_key, label_key=None, batch_key=batch_key, normalize=False)
    _neighbors(work, settings=dataclasses.replace(SCIB, n_neighbors=n_neighbors), seed=seed)
    return _ilisi_from_graph(work, batch_key, k0=k0)


def clisi(adata, embed_key: str, *, label_key: str = OBS_CELL_TYPE, k0: int = SCIB.lisi_k0,
          n_neighbors: int = SCIB.n_neighbors, seed: int = 0) -> float:
    """Graph cLISI of scib (median per-cell LISI of cell types, scaled to [0, 1]; 1 = pure).

    Parameters and errors as :func:`ilisi`; returns (n_labels - median LISI) / (n_labels - 1).
    """
    work = _scoring_copy(adata, embed_key, label_key=label_key, batch_key=None, normalize=False)
    _neighbors(work, settings=dataclasses.replace(SCIB, n_neighbors=n_neighbors), seed=seed)
    return _clisi_from_graph(work, label_key, k0=k0)


def _optimal_clusters(work, label_key: str, *, settings: ScibSettings, seed: int) -> dict[str, float]:
    """NMI and ARI of the Leiden clustering (resolution maximising NMI) of ``work``'s kNN graph
    (already built on obsm['X_emb']) against ``obs[label_key]``, as scib.metrics.metrics does."""
    from scib.metrics import ari, cluster_optimal_resolution, nmi

    cluster_optimal_resolution(work, label_key, cluster_key=_CLUSTER, metric=nmi, use_rep=_EMB,
                               resolutions=list(settings.resolutions), force=True, verbose=False,
                               flavor=settings.leiden_flavor, random_state=seed)
    return {"nmi": float(nmi(work, _CLUSTER, label_key, implementation=settings.nmi_implementation)),
            "ari": float(ari(work, _CLUSTER, label_key))}


def cluster_agreement(embedding, labels, *, seed: int = 0, normalize: bool = True,
                      settings: ScibSettings = SCIB) -> Scores:
    """NMI and ARI between cell types and the Leiden clusters of an embedding (scib's
    optimal-resolution clustering, the same calls as :func:`score_integration`).

    Parameters
    ----------
    embedding
        (n_cells, n_dims) array.
    labels
        (n_cells,) cell types.
    seed
        Seed of the kNN graph and of Leiden.
    normalize
        L2-normalise each row first.

    Returns
    -------
    Scores
        ``nmi``, ``ari`` in [0, 1].
    """
    import anndata as ad

    emb = as_matrix(embedding, name="embedding")
    labels = as_labels(labels, name="labels")
    if len(labels) != emb.shape[0]:
        raise InputError(f"labels: {len(labels)} entries for {emb.shape[0]} cells")
    if len(np.unique(labels)) < 2:
        raise InputError("labels: NMI / ARI need at least 2 cell types")
    emb = l2_normalize(emb) if normalize else emb.astype(np.float32)
    work = ad.AnnData(obs=pd.DataFrame({"label": pd.Categorical(labels)},
                                       index=[str(i) for i in range(len(labels))]), obsm={_EMB: emb})
    _neighbors(work, settings=settings, seed=seed)
    with quiet_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return Scores(_optimal_clusters(work, "label", settings=settings, seed=seed))


def score_integration(adata, embed_key: str, *, label_key: str = OBS_CELL_TYPE,
                      batch_key: str = OBS_BATCH, unintegrated=None, seed: int = 0,
                      normalize: bool = True, lisi: bool = True,
                      settings: ScibSettings = SCIB) -> Scores:
    """scib integration metrics of one embedding of all cells.

    Parameters
    ----------
    adata
        AnnData with the embedding ``obsm[embed_key]`` (n_cells, n_dims) and the columns
        ``obs[label_key]`` (cell type) and ``obs[batch_key]``. Not modified.
    embed_key
        obsm key of the embedding.
    label_key, batch_key
        obs columns of cell type and batch.
    unintegrated
        AnnData of the same cells (same obs_names) with X = log-normalised expression
        (:func:`cellmamba.datasets.log_normalized`), for PCR; None leaves ``pcr`` NaN.
    seed
        Seed of the kNN graph and of Leiden (``random_state``).
    normalize
        L2-normalise each cell's embedding first (scGPT / SC-MAMBA2 and DESIGN.md: True).
    lisi
        Compute iLISI / cLISI (needs the C++ helper, see :mod:`._lisi_build`); when False they
        are NaN with a note. kBET is not computed (module docstring).
    settings
        scib argument choices; :data:`SCIB` for every reported number.

    Returns
    -------
    Scores
        ``dict[str, float]`` with every name of :data:`INTEGRATION_METRICS` (all in [0, 1],
        higher is better): ``nmi``, ``ari`` (Leiden, resolution maximising NMI vs cell type),
        ``asw_cell`` ((ASW + 1) / 2 of cell types), ``isolated_label_f1``,
        ``isolated_label_asw``, ``asw_batch`` (scib silhouette_batch, 1 = mixed),
        ``graph_connectivity``, ``pcr`` (PCR comparison, scaled), ``ilisi``, ``clisi``,
        ``avg_bio`` = mean(ari, nmi, asw_cell), ``avg_batch`` = mean(asw_batch,
        graph_connectivity). ``.notes`` says why a value is NaN.
    """
    from scib.metrics import graph_connectivity, isolated_labels, pcr_comparison, silhouette, silhouette_batch

    work = _scoring_copy(adata, embed_key, label_key=label_key, batch_key=batch_key, normalize=normalize)
    scores = Scores()
    n_labels, n_batches = work.obs[label_key].nunique(), work.obs[batch_key].nunique()
    if n_labels < 2:
        raise InputError(f"obs['{label_key}'] has {n_labels} cell type; integration metrics need at least 2")
    _neighbors(work, settings=settings, seed=seed)
    leiden_kwargs = {"flavor": settings.leiden_flavor, "random_state": seed}  # isolated-label F1's clustering

    with quiet_stdout(log), warnings.catch_warnings():
        # scanpy / pandas deprecation notices about scib 1.1.x's calls, once per metric: noise
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # scib's notice that no label is isolated: recorded as a note instead
        warnings.filterwarnings("ignore", message="iso_threshold is equal", category=UserWarning)
        scores.update(_optimal_clusters(work, label_key, settings=settings, seed=seed))
        scores["asw_cell"] = float(silhouette(work, label_key, _EMB, metric=settings.silhouette_metric))
        if n_batches < 2:
            scores.skip("asw_batch", f"one batch in obs['{batch_key}']")
        else:
            scores["asw_batch"] = float(silhouette_batch(work, batch_key, label_key, _EMB,
                                                         metric=settings.silhouette_metric, verbose=False))
            if np.isnan(scores["asw_batch"]):
                scores.notes["asw_batch"] = "every cell type occurs in a single batch"
        scores["graph_connectivity"] = float(graph_connectivity(work, label_key))

        iso_kwargs = dict(label_key=label_key, batch_key=batch_key, embed=_EMB,
                          iso_threshold=settings.iso_threshold, verbose=False)
        for name, cluster in (("isolated_label_f1", True), ("isolated_label_asw", False)):
            extra = dict(resolutions=list(settings.resolutions), **leiden_kwargs) if cluster else {}
            value = isolated_labels(work.copy(), cluster=cluster, **iso_kwargs, **extra)
            if np.isnan(value):
                scores.skip(name, "no isolated labels: every cell type occurs in every batch")
            else:
                scores[name] = float(value)

        if unintegrated is None:
            scores.skip("pcr", "no unintegrated data given")
        elif n_batches < 2:
            scores.skip("pcr", f"one batch in obs['{batch_key}']")
        else:
            pre = _unintegrated_copy(unintegrated, work)
            scores["pcr"] = float(pcr_comparison(pre, work, covariate=batch_key, embed=_EMB,
                                                 n_comps=settings.pcr_n_comps,
                                                 linreg_method=settings.pcr_linreg_method, scale=True))
    if not lisi:
        scores.skip("ilisi", "LISI disabled")
        scores.skip("clisi", "LISI disabled")
    else:
        if n_batches < 2:
            scores.skip("ilisi", f"one batch in obs['{batch_key}']")
        else:
            scores["ilisi"] = _ilisi_from_graph(work, batch_key, k0=settings.lisi_k0)
        scores["clisi"] = _clisi_from_graph(work, label_key, k0=settings.lisi_k0)

    scores["avg_bio"] = float(np.mean([scores["ari"], scores["nmi"], scores["asw_cell"]]))
    scores["avg_batch"] = float(np.mean([scores["asw_batch"], scores["graph_connectivity"]]))
    if np.isnan(scores["avg_batch"]):
        scores.notes["avg_batch"] = "asw_batch is NaN"
    out = Scores({k: scores[k] for k in INTEGRATION_METRICS}, notes=scores.notes)
    log.info("integration metrics of obsm['%s']: %s", embed_key,
             ", ".join(f"{k}={v:.4f}" for k, v in out.items()))
    return out


def _unintegrated_copy(unintegrated, work):
    """AnnData(X = unintegrated X, obs = work.obs), rows in ``work``'s order."""
    import anndata as ad
    import scipy.sparse as sp

    names = pd.Index(unintegrated.obs_names)
    if not names.is_unique:
        raise InputError("unintegrated: obs_names are not unique")
    missing = work.obs_names.difference(names)
    if len(missing):
        raise InputError(f"unintegrated: {len(missing)} cells of the embedding are missing "
                         f"(e.g. {list(missing[:3])}); it must hold the same cells")
    X = unintegrated.X
    if not names.equals(work.obs_names):
        X = X[names.get_indexer(work.obs_names)]
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    return ad.AnnData(X=X, obs=work.obs.copy())


#: obsm key of the cell embedding in an integration method's embedding.h5ad
EMBEDDING_KEY = OBSM_EMBEDDING


def score_embedding_file(dataset_path, embedding_path, *, seed: int = 0, embed_key: str = EMBEDDING_KEY,
                         label_key: str = OBS_CELL_TYPE, batch_key: str = OBS_BATCH) -> Scores:
    """:func:`score_integration` of an embedding file against its standard-schema dataset.

    Parameters
    ----------
    dataset_path
        Standard-schema h5ad (obs ``cell_type``, ``batch``; X / layers as
        ``uns['cellmamba']['x_kind']`` says); its log-normalised expression
        (:func:`cellmamba.datasets.log_normalized`) is the unintegrated side of PCR.
    embedding_path
        h5ad with the same obs_names (any order) and the embedding in ``obsm[embed_key]``.
    seed
        Seed of the scoring (kNN graph, Leiden); fixed for every run so that differences
        between runs come from the embeddings.
    """
    import anndata as ad

    from ..datasets import log_normalized, validate_standard
    from ..io import read_h5ad_checked

    data = read_h5ad_checked(dataset_path)
    validate_standard(data, "integration", source=str(dataset_path))
    emb = _read_embedding(embedding_path)
    if embed_key not in emb.obsm:
        raise InputError(f"{embedding_path}: obsm['{embed_key}'] is missing; found {list(emb.obsm)}")
    names = pd.Index(emb.obs_names)
    if not names.is_unique or set(names) != set(data.obs_names):
        n_miss = len(data.obs_names.difference(names))
        n_extra = len(names.difference(data.obs_names))
        raise InputError(f"{embedding_path}: obs_names must be the dataset's cells, each once "
                         f"({n_miss} dataset cells missing, {n_extra} unknown cells, "
                         f"{int(names.duplicated().sum())} repeated)")
    order = names.get_indexer(data.obs_names)
    scored = ad.AnnData(obs=data.obs[[label_key, batch_key]].copy(),
                        obsm={embed_key: np.asarray(emb.obsm[embed_key])[order]})
    unintegrated = ad.AnnData(X=log_normalized(data, source=str(dataset_path)), obs=data.obs[[]].copy())
    return score_integration(scored, embed_key, label_key=label_key, batch_key=batch_key,
                             unintegrated=unintegrated, seed=seed)


def _read_embedding(path):
    """An embedding h5ad (obs + obsm; X may be absent, so not read_h5ad_checked's X check)."""
    from ..io import read_h5ad_plain

    return read_h5ad_plain(path, f"an .h5ad file with obsm['{EMBEDDING_KEY}']")

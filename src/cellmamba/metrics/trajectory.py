"""Trajectory conservation of a cell embedding (scib 1.1.x) and the correlation of its diffusion
pseudotime with a published pseudotime and with the measured time.

Every number starts from the same steps, scib's (``scib.metrics.trajectory_conservation``, also
the NeurIPS 2021 multimodal benchmark's ``ti_cons`` on BMMC's ``GEX_pseudotime_order``):

1. a kNN graph on the embedding of ALL cells (``sc.pp.neighbors``, 15 neighbours, seeded), as
   the benchmark builds it before scoring;
2. the cells with a published pseudotime (non-NaN) kept, with their part of that graph;
3. the root: among the cells of the group (``label_key``) with the lowest mean published
   pseudotime, the most extreme one in the first 3 diffusion components of the embedding's largest
   connected component (``scib.metrics.trajectory.get_root``);
4. scanpy's diffusion pseudotime (``sc.tl.dpt``, 10 diffusion components) from that root; cells
   outside the largest component, and cells it cannot reach (DPT > 1), get 0 as in scib.

Metrics (:data:`METRICS`; higher is better but for the last):

- ``trajectory_conservation``: scib's (Spearman rho(published pseudotime, DPT) + 1) / 2, in [0, 1];
  0 when no root cell lies in the largest component (scib's convention);
- ``dpt_spearman_pseudotime``: that Spearman rho itself, in [-1, 1] (= 2 x conservation - 1;
  reported signed so that an ordering from the wrong end reads negative);
- ``dpt_spearman_time``: Spearman rho(measured time, DPT) over the same cells (e.g. HSMM's hours
  0 / 24 / 48 / 72, heavily tied); NaN where the dataset has no measured time;
- ``root_pseudotime_quantile`` (lower is better; a diagnostic of step 3): where the chosen root lies
  in the published pseudotime, (average rank - 1) / (n - 1) over the cells with one: 0 = the
  earliest cell. scib votes over diffusion components 0-2, and scanpy's component 0 is the
  near-constant first eigenvector; when the three votes name three cells, the first of them in row
  order wins, which can be a root-group cell the published pseudotime places late (HSMM's PCA: a
  0 h cell at quantile 0.87, and a DPT running backwards). This column makes such a root visible.

Choices, all deliberate: the embedding is used as given (``normalize=False``; scib and the
NeurIPS benchmark do not L2-normalise, unlike the integration task's scGPT convention); no
``batch_key`` (the NeurIPS metric pools batches; HSMM has none); one seed for every run's graph.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..keys import OBS_DPT, OBS_PSEUDOTIME, OBS_TIME, OBSM_EMBEDDING, UNS, UNS_IROOT
from ._common import Scores, as_labels, as_matrix, quiet_stdout

__all__ = ["METRICS", "TRAJECTORY_METRICS", "TrajectorySettings", "TRAJECTORY", "TrajectoryReference", "spearman",
           "diffusion_pseudotime", "score_trajectory", "score_trajectory_files", "PER_CELL_COLUMNS"]

log = logging.getLogger(__name__)

#: the metric names :func:`score_trajectory` returns, in table order -> direction (:mod:`.rows`)
METRICS = {"trajectory_conservation": "higher", "dpt_spearman_pseudotime": "higher", "dpt_spearman_time": "higher",
           "root_pseudotime_quantile": "lower"}
#: the metric names :func:`score_trajectory` returns, in table order
TRAJECTORY_METRICS = tuple(METRICS)
#: columns of the per-cell frame :func:`score_trajectory_files` returns (the figure's data)
PER_CELL_COLUMNS = ("cell", "method", "seed", "dpt", "published_pseudotime", "measured_time", "root")

_EMB = OBSM_EMBEDDING
_PT, _GROUP, _TIME = PER_CELL_COLUMNS[4], "root_group", PER_CELL_COLUMNS[5]  # obs of the scoring copy


@dataclasses.dataclass(frozen=True)
class TrajectorySettings:
    """Every choice of the scoring (scib 1.1.x's, unless noted)."""

    #: kNN graph on the embedding (scanpy's default, what scib's examples and the NeurIPS metric use)
    n_neighbors: int = 15
    #: L2-normalise each cell's embedding first (scib / NeurIPS: no)
    normalize: bool = False

    def __post_init__(self):
        if isinstance(self.n_neighbors, bool) or not isinstance(self.n_neighbors, (int, np.integer)) \
                or self.n_neighbors < 2:
            raise InputError(f"trajectory scoring: n_neighbors is {self.n_neighbors!r}; expected an integer >= 2")
        if not isinstance(self.normalize, bool):
            raise InputError(f"trajectory scoring: normalize is {self.normalize!r}; expected true or false")


#: the settings used for every reported number
TRAJECTORY = TrajectorySettings()


@dataclasses.dataclass(frozen=True)
class TrajectoryReference:
    """Where a prepared dataset keeps its published trajectory (config
    ``evaluation.trajectory.references.<dataset>``)."""

    #: obs column of the published pseudotime (NaN: the cell is on no trajectory)
    pseudotime_key: str = OBS_PSEUDOTIME
    #: obs column of the groups whose earliest (lowest mean pseudotime) holds the root (scib's label_key)
    label_key: str = OBS_TIME
    #: obs column of the measured time; None: the dataset has none (dpt_spearman_time is NaN)
    time_key: str | None = None
    #: var ``modality`` whose features are used (BMMC CITE-seq: ``rna``); None: every feature
    modality: str | None = None


def spearman(reference, values) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr, average ranks for ties) over the cells
    where both are finite.

    Parameters
    ----------
    reference, values
        (n_cells,) numbers; NaN / inf entries drop their cell.

    Returns
    -------
    float in [-1, 1]; NaN with fewer than 2 such cells or when either side is constant on them.
    """
    from scipy.stats import spearmanr

    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(values, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"spearman: {a.size} reference values for {b.size} values")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def _scoring_copy(adata, embed_key: str, ref: TrajectoryReference, settings: TrajectorySettings):
    """AnnData (no X): obs published pseudotime / root group / measured time, obsm['X_emb']."""
    import anndata as ad

    if embed_key not in adata.obsm:
        raise InputError(f"obsm['{embed_key}'] (the embedding to score) is missing; found {list(adata.obsm)}")
    columns = {_PT: ref.pseudotime_key, _GROUP: ref.label_key, _TIME: ref.time_key}
    for what, key in columns.items():
        if key is not None and key not in adata.obs:
            raise InputError(f"obs['{key}'] ({what.replace('_', ' ')}) is required for trajectory metrics; "
                             f"found {list(adata.obs.columns)}")
    pt = pd.to_numeric(adata.obs[ref.pseudotime_key], errors="coerce").to_numpy(np.float64)
    if np.isinf(pt).any() or (np.isnan(pt) & adata.obs[ref.pseudotime_key].notna().to_numpy()).any():
        raise InputError(f"obs['{ref.pseudotime_key}']: the published pseudotime holds values that are not finite "
                         "numbers (NaN marks a cell on no trajectory; inf and text are errors)")
    on = np.isfinite(pt)
    if on.sum() < 3:
        raise InputError(f"obs['{ref.pseudotime_key}']: {int(on.sum())} cells have a pseudotime; trajectory "
                         "metrics need at least 3")
    obs = pd.DataFrame({_PT: pt}, index=adata.obs_names.astype(str))
    # the root groups as strings; cells without a pseudotime are never grouped (scib subsets first)
    labels = np.full(adata.n_obs, "", dtype=object)
    labels[on] = as_labels(adata.obs[ref.label_key][on], name=f"obs['{ref.label_key}']")
    obs[_GROUP] = pd.Categorical(labels)
    if ref.time_key is not None:
        time = pd.to_numeric(adata.obs[ref.time_key], errors="coerce").to_numpy(np.float64)
        if not np.isfinite(time[on]).all():
            raise InputError(f"obs['{ref.time_key}'] (measured time): {int((~np.isfinite(time[on])).sum())} cells "
                             "with a pseudotime have no finite time")
        obs[_TIME] = time
    emb = as_matrix(adata.obsm[embed_key], name=f"obsm['{embed_key}']")
    if emb.shape[0] != adata.n_obs:
        raise InputError(f"obsm['{embed_key}']: {emb.shape[0]} rows for {adata.n_obs} cells")
    if settings.normalize:
        from .integration import l2_normalize

        emb = l2_normalize(emb)
    if adata.n_obs <= settings.n_neighbors:
        raise InputError(f"{adata.n_obs} cells: trajectory metrics need more cells than "
                         f"n_neighbors={settings.n_neighbors}")
    return ad.AnnData(obs=obs, obsm={_EMB: emb.astype(np.float32)})


def _dpt_from_root(work):
    """(DPT of the cells with a pseudotime, the root cell's name, scib's pre / post objects); raises
    scib's RootCellError."""
    import anndata as ad
    import scanpy as sc
    from scib.metrics.trajectory import get_root

    on = np.isfinite(work.obs[_PT].to_numpy())
    cells = work.obs_names[on]
    post = work[cells].copy()   # the graph of all cells, restricted to these cells (scib subsets the same way)
    post.obs[_GROUP] = post.obs[_GROUP].cat.remove_unused_categories()
    pre = ad.AnnData(obs=post.obs.copy())
    iroot, largest = get_root(pre, post.copy(), _GROUP, _PT)
    largest.uns[UNS_IROOT] = iroot
    sc.tl.dpt(largest)
    dpt = largest.obs[OBS_DPT].astype(np.float64)
    dpt[dpt > 1] = 0.0        # unreachable cells (inf): scib sets them to 0
    root = str(largest.obs_names[iroot])
    return dpt.reindex(cells).fillna(0.0), root, pre, post   # outside the largest component: 0, as scib


def diffusion_pseudotime(adata, embed_key: str, *, reference: TrajectoryReference,
                         settings: TrajectorySettings = TRAJECTORY, seed: int = 0) -> pd.Series:
    """The diffusion pseudotime of an embedding, rooted as scib roots it (module doc, steps 1-4).

    Parameters
    ----------
    adata
        AnnData with ``obsm[embed_key]`` (n_cells, n_dims) and the obs columns ``reference`` names.
    embed_key
        obsm key of the embedding.
    reference
        The obs columns of the published trajectory (:class:`TrajectoryReference`).
    settings, seed
        kNN graph size / normalisation, and its seed.

    Returns
    -------
    pandas.Series (n_trajectory_cells,) float64, indexed by the obs_names of the cells with a
    published pseudotime (dataset order): DPT in [0, 1]; ``.attrs["root"]``: the root cell's name.

    Raises
    ------
    scib.metrics.utils.RootCellError
        No cell of the root group is in the embedding graph's largest connected component.
    """
    import scanpy as sc

    work = _scoring_copy(adata, embed_key, reference, settings)
    sc.pp.neighbors(work, n_neighbors=settings.n_neighbors, use_rep=_EMB, random_state=seed)
    with quiet_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # anndata's view notices inside scib and scanpy
        dpt, root = _dpt_from_root(work)[:2]
    dpt.attrs["root"] = root
    return dpt


def score_trajectory(adata, embed_key: str, *, reference: TrajectoryReference,
                     settings: TrajectorySettings = TRAJECTORY, seed: int = 0) -> tuple[Scores, pd.Series]:
    """scib's trajectory conservation of one embedding and the Spearman correlations of its DPT.

    Parameters
    ----------
    adata
        AnnData with ``obsm[embed_key]`` (n_cells, n_dims; every cell of the dataset: the graph is
        built on all of them) and the obs columns ``reference`` names. Not modified.
    embed_key
        obsm key of the embedding.
    reference
        The published trajectory's obs columns (:class:`TrajectoryReference`).
    settings
        :data:`TRAJECTORY` for every reported number.
    seed
        Seed of the kNN graph (fixed for every run, so runs differ only by their embeddings).

    Returns
    -------
    (scores, dpt)
        ``scores``: :class:`Scores` with every name of :data:`TRAJECTORY_METRICS` (``.notes`` says
        why one is NaN); ``dpt``: pandas.Series (n_trajectory_cells,) of the DPT, indexed by
        obs_names, its root cell's name in ``dpt.attrs["root"]`` (NaN throughout, no root, when no
        root cell was found).
    """
    import scanpy as sc
    from scib.metrics import trajectory_conservation
    from scib.metrics.utils import RootCellError

    work = _scoring_copy(adata, embed_key, reference, settings)
    sc.pp.neighbors(work, n_neighbors=settings.n_neighbors, use_rep=_EMB, random_state=seed)
    scores = Scores()
    with quiet_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # anndata's view notices and pandas' chained-assignment notice in scib
        try:
            dpt, root, pre, post = _dpt_from_root(work)
        except RootCellError:
            cells = work.obs_names[np.isfinite(work.obs[_PT].to_numpy())]
            note = "no cell of the root group is in the largest connected component of the kNN graph"
            scores["trajectory_conservation"] = 0.0   # scib's value for a failed root
            scores.notes["trajectory_conservation"] = note + " (scib scores 0)"
            scores.skip("dpt_spearman_pseudotime", note)
            scores.skip("dpt_spearman_time", note)
            scores.skip("root_pseudotime_quantile", note)
            return Scores({k: scores[k] for k in TRAJECTORY_METRICS}, notes=scores.notes), \
                pd.Series(np.nan, index=cells, dtype=np.float64)
        scores["trajectory_conservation"] = float(trajectory_conservation(pre, post, label_key=_GROUP,
                                                                          pseudotime_key=_PT))
    from scipy.stats import rankdata

    published = work.obs.loc[dpt.index, _PT].to_numpy()
    scores["dpt_spearman_pseudotime"] = spearman(published, dpt.to_numpy())
    if np.isnan(scores["dpt_spearman_pseudotime"]):
        scores.notes["dpt_spearman_pseudotime"] = "the DPT or the published pseudotime is constant"
    if reference.time_key is None:
        scores.skip("dpt_spearman_time", "the dataset has no measured time")
    else:
        scores["dpt_spearman_time"] = spearman(work.obs.loc[dpt.index, _TIME].to_numpy(), dpt.to_numpy())
        if np.isnan(scores["dpt_spearman_time"]):
            scores.notes["dpt_spearman_time"] = "the DPT or the measured time is constant"
    ranks = rankdata(published)
    scores["root_pseudotime_quantile"] = float((ranks[dpt.index.get_loc(root)] - 1) / (len(ranks) - 1))
    dpt.attrs["root"] = root
    out = Scores({k: scores[k] for k in TRAJECTORY_METRICS}, notes=scores.notes)
    log.info("trajectory metrics of obsm['%s'] (%d cells with a pseudotime): %s", embed_key, len(dpt),
             ", ".join(f"{k}={v:.4f}" for k, v in out.items()))
    return out, dpt


def _read_embedding(path):
    from ..io import read_h5ad_plain

    emb = read_h5ad_plain(path, f"an embedding .h5ad with obsm['{_EMB}']")
    if _EMB not in emb.obsm:
        raise InputError(f"{path}: obsm['{_EMB}'] is missing; found {list(emb.obsm)}")
    info = emb.uns.get(UNS, {})
    for key in ("method", "seed"):
        if key not in info:
            raise InputError(f"{path}: uns['{UNS}']['{key}'] is missing (written by the trajectory embedding and "
                             "baseline rules)")
    return emb, info


def score_trajectory_files(dataset_path, embedding_paths: Sequence[str | os.PathLike], *,
                           reference: TrajectoryReference | Mapping, settings: TrajectorySettings | Mapping = TRAJECTORY,
                           seed: int = 0, dataset: str | None = None,
                           extra: Mapping[str, object] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`score_trajectory` of every embedding file of one dataset, as metric rows.

    Parameters
    ----------
    dataset_path
        The prepared dataset (results/datasets/<dataset>.h5ad): obs holds the ``reference`` columns.
    embedding_paths
        h5ad files with the dataset's cells (same obs_names, any order), ``obsm['X_emb']`` and
        ``uns['cellmamba']`` ``method`` and ``seed`` (``n_params`` for a model).
    reference, settings
        :class:`TrajectoryReference` / :class:`TrajectorySettings` or their dicts (config).
    seed
        Seed of the scoring's kNN graphs (one for every run).
    dataset
        The dataset's name in the rows (default: the file's stem).
    extra
        Flag columns copied onto every row (e.g. ``{"simulated": False}``).

    Returns
    -------
    (metrics, per_cell)
        ``metrics``: the long rows of :func:`cellmamba.metrics.metrics_frame` (task
        ``trajectory``), flags ``n_cells`` (cells with a published pseudotime) and, for models,
        ``n_params``; ``per_cell``: :data:`PER_CELL_COLUMNS` of each method's first seed (the
        cells with a pseudotime; ``measured_time`` NaN without one; ``root`` True for the root cell).
    """
    import anndata as ad

    from ..io import read_h5ad_checked
    from .rows import metrics_frame

    if isinstance(reference, Mapping):
        reference = _from_dict(TrajectoryReference, reference, "evaluation.trajectory.references.<dataset>")
    if isinstance(settings, Mapping):
        settings = _from_dict(TrajectorySettings, settings, "evaluation.trajectory.scoring")
    if not embedding_paths:
        raise InputError("score_trajectory_files: no embedding files given")
    backed = read_h5ad_checked(dataset_path, backed="r")   # obs only: BMMC's matrices are GBs
    data = ad.AnnData(obs=backed.obs.copy())
    backed.file.close()
    dataset = dataset or Path(dataset_path).stem
    keys = [k for k in (reference.pseudotime_key, reference.label_key, reference.time_key) if k is not None]
    missing = [k for k in keys if k not in data.obs]
    if missing:
        raise InputError(f"{dataset_path}: obs has no column(s) {missing} (evaluation.trajectory.references."
                         f"{dataset}); found {list(data.obs.columns)}")
    frames, cells, first_seed = [], [], {}
    for path in embedding_paths:
        emb, info = _read_embedding(path)
        names = pd.Index(emb.obs_names)
        if not names.is_unique or set(names) != set(data.obs_names):
            raise InputError(f"{path}: obs_names must be the cells of {dataset_path}, each once "
                             f"({len(data.obs_names.difference(names))} missing, "
                             f"{len(names.difference(data.obs_names))} unknown)")
        method, run_seed = str(info["method"]), int(info["seed"])
        scored = ad.AnnData(obs=data.obs[list(dict.fromkeys(keys))].copy(),
                            obsm={_EMB: np.asarray(emb.obsm[_EMB])[names.get_indexer(data.obs_names)]})
        scores, dpt = score_trajectory(scored, _EMB, reference=reference, settings=settings, seed=seed)
        flags = {**dict(extra or {}), "n_cells": int(len(dpt))}
        if info.get("n_params") is not None:
            flags["n_params"] = int(info["n_params"])
        frames.append(metrics_frame(scores, task="trajectory", dataset=dataset, method=method, seed=run_seed,
                                    extra=flags))
        if method not in first_seed or run_seed < first_seed[method]:
            first_seed[method] = run_seed
            time = (data.obs.loc[dpt.index, reference.time_key].to_numpy(np.float64) if reference.time_key
                    else np.full(len(dpt), np.nan))
            cells = [c for c in cells if c["method"].iloc[0] != method] + [pd.DataFrame({
                "cell": dpt.index.astype(str), "method": method, "seed": run_seed, "dpt": dpt.to_numpy(),
                _PT: data.obs.loc[dpt.index, reference.pseudotime_key].to_numpy(np.float64),
                _TIME: time, "root": dpt.index == dpt.attrs.get("root")})]
    metrics = pd.concat(frames, ignore_index=True)
    # flags identify a table row: models have n_params, baselines none (NaN -> blank in the table)
    per_cell = pd.concat(cells, ignore_index=True)[list(PER_CELL_COLUMNS)]
    return metrics, per_cell


def _from_dict(cls, data: Mapping, where: str):
    from .._util import dataclass_from_dict

    return dataclass_from_dict(cls, data, where=where)

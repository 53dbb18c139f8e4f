"""Cell QC of one census shard (results/qc/{i}.h5ad): scanpy QC metrics and cell filters.

Raw counts stay in X; no highly-variable-gene selection, ever (DESIGN.md: HVG-free corpus).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .census_store import check_raw_counts
from .errors import InputError
from .io import atomic_path, read_h5ad_checked
from .keys import (OBS_DATASET_ID, OBS_N_GENES, OBS_PCT_MITO, OBS_SIZE_FACTOR, OBS_TOTAL_COUNTS, UNS,
                   UNS_MEASURED_DATASETS, VAR_FEATURE_NAME, VARM_MEASURED)

__all__ = ["QCConfig", "qc_shard", "qc_adata", "check_shard_layout"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QCConfig:
    """Cell filters (config ``qc:``); a cell is kept when it passes all three."""

    #: minimum number of detected genes (n_genes_by_counts >= min_genes)
    min_genes: int = 200
    #: minimum total counts (total_counts >= min_counts)
    min_counts: int = 500
    #: maximum percentage of counts in mitochondrial genes (pct_counts_mt <= max_pct_mito)
    max_pct_mito: float = 20.0
    #: symbol prefix of mitochondrial genes (var feature_name)
    mito_prefix: str = "MT-"

    def __post_init__(self) -> None:
        for name in ("min_genes", "min_counts"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise InputError(f"qc config: {name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.max_pct_mito, (int, float)) or not 0 <= self.max_pct_mito <= 100:
            raise InputError(f"qc config: max_pct_mito must be a number in [0, 100], got {self.max_pct_mito!r}")
        if not isinstance(self.mito_prefix, str) or not self.mito_prefix:
            raise InputError(f"qc config: mito_prefix must be a non-empty string, got {self.mito_prefix!r}")


def check_shard_layout(adata, *, source: str) -> None:
    """Raise :class:`InputError` unless ``adata`` has the census-shard keys the later stages read."""
    if OBS_DATASET_ID not in adata.obs:
        raise InputError(f"{source}: obs has no {OBS_DATASET_ID!r} column (expected a census shard)")
    if VAR_FEATURE_NAME not in adata.var:
        raise InputError(f"{source}: var has no {VAR_FEATURE_NAME!r} column (the gene symbols)")
    if VARM_MEASURED not in adata.varm:
        raise InputError(f"{source}: varm has no {VARM_MEASURED!r} mask (expected a census shard)")
    names = list(adata.uns.get(UNS, {}).get(UNS_MEASURED_DATASETS, []))
    if len(names) != adata.varm[VARM_MEASURED].shape[1]:
        raise InputError(f"{source}: uns[{UNS!r}][{UNS_MEASURED_DATASETS!r}] names {len(names)} datasets but "
                         f"varm[{VARM_MEASURED!r}] has {adata.varm[VARM_MEASURED].shape[1]} columns")
    absent = sorted(set(adata.obs[OBS_DATASET_ID].astype(str)) - set(map(str, names)))
    if absent:
        raise InputError(f"{source}: obs {OBS_DATASET_ID} value(s) {absent[:5]} have no column in varm[{VARM_MEASURED!r}]")


def qc_adata(adata, config: QCConfig, *, source: str = "adata"):
    """QC metrics and filters on a census-shard AnnData; returns the kept cells (a new AnnData).

    Adds obs ``n_genes_by_counts``, ``total_counts``, ``pct_counts_mt`` (scanpy's
    ``calculate_qc_metrics``) and ``size_factor`` = total_counts / median total_counts of the
    kept cells; records ``uns["cellmamba"]["qc"]``. X (raw counts), var, varm are unchanged.
    """
    import anndata as ad
    import scanpy as sc

    check_shard_layout(adata, source=source)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    check_raw_counts(X.data, source=f"{source} X")
    mito = adata.var[VAR_FEATURE_NAME].astype(str).str.startswith(config.mito_prefix).to_numpy()
    if not mito.any():
        logger.warning("%s: no gene symbol starts with %r: pct_counts_mt is 0 for every cell", source, config.mito_prefix)
    # a light AnnData view: scanpy reads the mito mask from var, the shard's var stays untouched
    probe = ad.AnnData(X=sp.csr_matrix(X), var=pd.DataFrame({"mt": mito}, index=adata.var_names))
    qc_obs, _ = sc.pp.calculate_qc_metrics(probe, qc_vars=["mt"], percent_top=None, log1p=False, inplace=False)
    pct = qc_obs[OBS_PCT_MITO].to_numpy()
    n_genes = qc_obs["n_genes_by_counts"].to_numpy()
    total = qc_obs["total_counts"].to_numpy()
    keep = (n_genes >= config.min_genes) & (total >= config.min_counts) & (total > 0) & (pct <= config.max_pct_mito)
    logger.info("%s: %d of %d cells kept (fail min_genes %d: %d, min_counts %d: %d, max_pct_mito %.1f: %d)",
                source, keep.sum(), adata.n_obs, config.min_genes, int((n_genes < config.min_genes).sum()),
                config.min_counts, int((total < config.min_counts).sum()), config.max_pct_mito,
                int((pct > config.max_pct_mito).sum()))
    if not keep.any():
        raise InputError(f"{source}: no cell of {adata.n_obs} passes QC ({asdict(config)})")
    out = adata[keep].copy()
    out.obs[OBS_N_GENES] = n_genes[keep].astype(np.int64)
    out.obs[OBS_TOTAL_COUNTS] = total[keep].astype(np.float64)
    out.obs[OBS_PCT_MITO] = pct[keep].astype(np.float64)
    out.obs[OBS_SIZE_FACTOR] = out.obs[OBS_TOTAL_COUNTS] / np.median(total[keep])
    uns = dict(out.uns.get(UNS, {}))
    uns["qc"] = {**asdict(config), "n_cells_in": int(adata.n_obs), "n_cells_out": int(keep.sum())}
    out.uns[UNS] = uns
    return out


def qc_shard(in_path: str | os.PathLike, out_path: str | os.PathLike, *, config: QCConfig) -> Path:
    """QC one census shard file and write the QC shard (atomically).

    Parameters
    ----------
    in_path
        ``results/census/shards/{i}.h5ad`` (architecture.md, "Census shards").
    out_path
        ``results/qc/{i}.h5ad``: the kept cells, same layout, obs gains the QC columns.
    config
        The filters.
    """
    adata = read_h5ad_checked(in_path)
    out = qc_adata(adata, config, source=str(in_path))
    with atomic_path(out_path) as tmp:
        out.write_h5ad(tmp)
    logger.info("QC shard %s -> %s: %d cells", in_path, out_path, out.n_obs)
    return Path(out_path)

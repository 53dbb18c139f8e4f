"""Build a local, CELLxGENE-Census-shaped SOMA store (demo and tests).

The store has the layout the census API and :mod:`cellmamba.census` read::

    <out_dir>/                       SOMACollection (what cellxgene_census.open_soma(uri=...) opens)
      census_info/summary            SOMADataFrame  label, value
      census_info/datasets           SOMADataFrame  dataset_id, collection_doi, dataset_title, ...
      census_data/<organism>/obs     SOMADataFrame  soma_joinid, dataset_id, is_primary_data, ...
      census_data/<organism>/ms/RNA/var                              feature_id, feature_name, feature_length
      census_data/<organism>/ms/RNA/X/raw                            float32 counts (cells x genes)
      census_data/<organism>/ms/RNA/feature_dataset_presence_matrix  bool (datasets x genes)

Every member is registered with a relative URI, so the store can be moved. It is written with
tiledbsoma's own create/write API: ``tiledbsoma.io.from_anndata`` cannot produce this layout
(its var is the union of the registered AnnData's genes in arrival order, not a fixed gene
table, and it writes no presence matrix or census_info).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from .errors import InputError
from .genes import census_var, map_symbols, read_gene_table, read_id2name
from .io import atomic_path, read_h5ad_checked
from .keys import OBS_DATASET_ID, OBS_SOMA_JOINID, VAR_FEATURE_ID

__all__ = ["build_local_census", "build_demo_census", "check_raw_counts", "DEFAULT_OBS_DEFAULTS"]

logger = logging.getLogger(__name__)

#: obs columns every store cell has, with the value used when a dataset lacks the column
DEFAULT_OBS_DEFAULTS: dict[str, object] = {
    "is_primary_data": True,
    "assay": "unknown",
    "cell_type": "unknown",
    "tissue": "unknown",
    "disease": "unknown",
    "donor_id": "unknown",
}
#: census_info/datasets columns (as in the public Census), default ""
DATASET_COLUMNS = ("collection_id", "collection_name", "collection_doi", "dataset_title",
                   "dataset_version_id", "dataset_h5ad_path", "citation")
_WRITE_CELLS = 4096  # cells per X write (bounds the builder's extra memory per dataset)


def check_raw_counts(values: np.ndarray, *, source: str) -> None:
    """Raise :class:`InputError` unless ``values`` are finite non-negative integers.

    ``values``: the stored values of a sparse count matrix (e.g. ``csr.data``).
    """
    values = np.asarray(values)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        first = values[np.flatnonzero(bad)[:5]].tolist()
        raise InputError(f"{source}: raw counts must be non-negative integers; found {int(bad.sum())} "
                         f"value(s) that are not, e.g. {first}")


def _arrow_obs_column(values: pd.Series) -> pa.Array:
    if pd.api.types.is_bool_dtype(values):
        return pa.array(values.to_numpy(dtype=bool))
    if pd.api.types.is_integer_dtype(values):
        return pa.array(values.to_numpy(dtype=np.int64))
    if pd.api.types.is_float_dtype(values):
        return pa.array(values.to_numpy(dtype=np.float64))
    return pa.array(values.astype(str).to_numpy(dtype=object), type=pa.large_string())


def _write_dataframe(parent, key: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` (soma_joinid = row number) as SOMADataFrame ``key`` of ``parent``."""
    cols = {OBS_SOMA_JOINID: pa.array(np.arange(len(frame), dtype=np.int64))}
    cols.update({c: _arrow_obs_column(frame[c]) for c in frame.columns if c != OBS_SOMA_JOINID})
    table = pa.table(cols)
    # tiledbsoma 2.x: a new dataframe needs a soma_joinid domain or writes fall outside it
    with parent.add_new_dataframe(key, schema=table.schema, domain=[(0, max(len(frame) - 1, 0))]) as df:
        if len(frame):
            df.write(table)


def _dataset_obs(dataset_id: str, adata, obs_defaults: Mapping[str, object]) -> pd.DataFrame:
    obs = pd.DataFrame(index=np.arange(adata.n_obs))
    obs[OBS_DATASET_ID] = dataset_id
    for col, default in obs_defaults.items():
        obs[col] = adata.obs[col].to_numpy() if col in adata.obs else default
    return obs


def build_local_census(datasets: Mapping[str, object], out_dir: str | os.PathLike, *,
                       gene_table: pd.DataFrame, census_version: str = "2024-07-01",
                       organism: str = "homo_sapiens", dataset_metadata: Mapping[str, Mapping[str, str]] | None = None,
                       obs_defaults: Mapping[str, object] | None = None) -> Path:
    """Write a Census-shaped SOMA store from in-memory datasets.

    Parameters
    ----------
    datasets
        ``dataset_id -> AnnData``: X = raw counts (cells x genes, non-negative integers),
        ``var_names`` = Ensembl ids, each in ``gene_table``; obs columns named in
        ``obs_defaults`` are carried over when present. Cells get census ``soma_joinid`` s
        0..n-1 in the mapping's order; a dataset's measured genes are its var_names.
    out_dir
        The store's root (replaced atomically: written to a temporary sibling, then renamed).
    gene_table
        The census var (vocabulary) in order: columns ``feature_id``, ``feature_name``,
        ``feature_length``.
    census_version
        Written to ``census_info/summary`` (label ``census_version``).
    organism
        Experiment name under ``census_data``.
    dataset_metadata
        Optional ``dataset_id -> {column: value}`` for ``census_info/datasets`` (e.g.
        ``collection_doi``, ``dataset_title``).
    obs_defaults
        obs columns to write and their value where a dataset lacks them
        (default :data:`DEFAULT_OBS_DEFAULTS`).

    Returns
    -------
    The store's path.
    """
    import tiledbsoma as soma

    if not datasets:
        raise InputError("build_local_census: no datasets given")
    var = census_var(gene_table)
    gene_pos = pd.Index(var[VAR_FEATURE_ID])
    obs_defaults = dict(DEFAULT_OBS_DEFAULTS if obs_defaults is None else obs_defaults)
    dataset_metadata = dataset_metadata or {}
    n_cells = sum(a.n_obs for a in datasets.values())
    n_genes = len(var)

    with atomic_path(out_dir) as tmp:
        root = soma.Collection.create(str(tmp))
        with root:
            info = root.add_new_collection("census_info")
            rows = []
            for ds_id in datasets:
                meta = {c: "" for c in DATASET_COLUMNS}
                meta.update(dataset_metadata.get(ds_id, {}))
                rows.append({OBS_DATASET_ID: ds_id, **meta, "dataset_total_cell_count": datasets[ds_id].n_obs})
            _write_dataframe(info, "datasets", pd.DataFrame(rows))
            summary = pd.DataFrame({"label": ["census_version", "census_schema_version", "census_build_date",
                                              "dataset_schema_version", "total_cell_count", "unique_cell_count"],
                                    "value": [census_version, "2.0.1", _dt.date.today().isoformat(), "5.1.0",
                                              str(n_cells), str(n_cells)]})
            _write_dataframe(info, "summary", summary)
            info.close()

            data = root.add_new_collection("census_data")
            exp = data.add_new_collection(organism, soma.Experiment)
            obs = pd.concat([_dataset_obs(k, a, obs_defaults) for k, a in datasets.items()], ignore_index=True)
            _write_dataframe(exp, "obs", obs)
            ms = exp.add_new_collection("ms")
            rna = ms.add_new_collection("RNA", soma.Measurement)
            _write_dataframe(rna, "var", var)

            presence = rna.add_new_sparse_ndarray("feature_dataset_presence_matrix", type=pa.bool_(),
                                                  shape=(len(datasets), n_genes))
            x_coll = rna.add_new_collection("X")
            raw = x_coll.add_new_sparse_ndarray("raw", type=pa.float32(), shape=(n_cells, n_genes))
            offset = 0
            for ds_index, (ds_id, adata) in enumerate(datasets.items()):
                cols = gene_pos.get_indexer(pd.Index(adata.var_names).astype(str))
                if (cols < 0).any():
                    missing = list(pd.Index(adata.var_names)[cols < 0][:5])
                    raise InputError(f"dataset {ds_id}: {int((cols < 0).sum())} var_names are not in the gene "
                                     f"table, e.g. {missing} (expected Ensembl ids of the census gene table)")
                if len(np.unique(cols)) != len(cols):
                    raise InputError(f"dataset {ds_id}: duplicated var_names")
                pres = sp.coo_matrix((np.ones(len(cols), bool), (np.full(len(cols), ds_index), cols)),
                                     shape=(len(datasets), n_genes))
                presence.write(pa.SparseCOOTensor.from_scipy(pres))
                for start in range(0, adata.n_obs, _WRITE_CELLS):
                    block = sp.csr_matrix(adata.X[start:start + _WRITE_CELLS], dtype=np.float32)
                    block.eliminate_zeros()
                    check_raw_counts(block.data, source=f"dataset {ds_id}")
                    coo = block.tocoo()
                    table = pa.table({"soma_dim_0": coo.row.astype(np.int64) + offset + start,
                                      "soma_dim_1": cols[coo.col].astype(np.int64),
                                      "soma_data": coo.data.astype(np.float32)})
                    raw.write(table)
                offset += adata.n_obs
            for handle in (raw, x_coll, presence, rna, ms, exp, data):
                handle.close()
    logger.info("local census %s: %d cells from %d datasets, %d genes (census_version %s)",
                out_dir, n_cells, len(datasets), n_genes, census_version)
    return Path(out_dir)


def _symbols_to_ensembl(adata, gene_table: pd.DataFrame, id2name: pd.DataFrame, *, source: str):
    """Re-key a symbol-keyed AnnData by Ensembl id; unmapped symbols are counted, logged, left out."""
    mapping = map_symbols(adata.var_names, gene_table, id2name=id2name, source=source)
    out = adata[:, mapping.mapped].copy()
    out.var_names = mapping.feature_ids[mapping.mapped]
    return out, mapping


def build_demo_census(celltypist_h5ad: str | os.PathLike, kang_h5ad: str | os.PathLike,
                      out_dir: str | os.PathLike, *, gene_table: str | os.PathLike,
                      id2name: str | os.PathLike, census_version: str = "2024-07-01") -> Path:
    """Build the demo's local census from the two shipped datasets (resources/demo).

    Gene symbols are mapped to Ensembl ids through ``gene_table`` (GENCODE 48, the CELLxGENE
    reference) with ``id2name`` (GENCODE 44) as fallback; unknown and ambiguous symbols are
    counted and logged (they cannot enter an Ensembl-keyed store). The store's gene table (the
    demo vocabulary) is the genes of ``gene_table`` measured by at least one dataset, in
    ``gene_table`` (GTF) order. Dataset ids: ``celltypist_sample``, ``kang2018_pbmc``.

    Returns
    -------
    The store's path (``out_dir``).
    """
    genes = read_gene_table(gene_table)
    old = read_id2name(id2name)
    datasets = {}
    for ds_id, path in (("celltypist_sample", celltypist_h5ad), ("kang2018_pbmc", kang_h5ad)):
        adata = read_h5ad_checked(path)
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        check_raw_counts(adata.X.data, source=str(path))
        if "condition" in adata.obs:  # Kang: IFN-beta stimulation is the disease-like axis
            adata.obs["disease"] = np.where(adata.obs["condition"].astype(str) == "ctrl", "normal", "IFN-beta stimulated")
        adata.obs["cell_type"] = "unknown"
        adata.obs["assay"] = "10x 3' v2" if ds_id == "kang2018_pbmc" else "10x 3' v3"
        adata.obs["tissue"] = "blood"
        datasets[ds_id], _ = _symbols_to_ensembl(adata, genes, old, source=str(path))
    measured = set().union(*(set(a.var_names) for a in datasets.values()))
    vocab = genes[genes[VAR_FEATURE_ID].isin(measured)].reset_index(drop=True)
    logger.info("demo vocabulary: %d genes of %d in %s measured by at least one dataset",
                len(vocab), len(genes), gene_table)
    metadata = {"celltypist_sample": {"dataset_title": "celltypist 1.7.1 sample data", "collection_doi": ""},
                "kang2018_pbmc": {"dataset_title": "Kang et al. 2018 PBMC ctrl/stim subset (liger)",
                                  "collection_doi": "10.1038/nbt.4042"}}
    return build_local_census(datasets, out_dir, gene_table=vocab, census_version=census_version,
                              dataset_metadata=metadata)

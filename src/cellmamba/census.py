"""Query the CELLxGENE Census and stream raw counts into shards (results/census/).

Two steps, each a workflow job:

* :func:`plan_census` queries census obs once (value filter, excluded datasets, optional seeded
  subset) and assigns the sorted ``soma_joinid`` s to a STATIC number of contiguous, near-equal
  shards: ``plan.parquet`` (soma_joinid, dataset_id, shard) plus the gene table beside it.
* :func:`download_shard` streams one shard's ``X["raw"]`` in chunks of ``chunk_cells`` cells
  and appends each chunk to ``shards/{i}.h5ad``, so a job's memory depends on the chunk size,
  not on the shard size (the shard's obs table, a few columns per cell, is the only per-cell
  state held).

The public Census and a local store (:mod:`cellmamba.census_store`) are read through the same
code: ``cellxgene_census.open_soma(census_version=..., uri=...)``; only the uri differs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .census_store import check_raw_counts
from .errors import CorruptFileError, InputError
from .io import atomic_path
from .keys import (OBS_DATASET_ID, OBS_SOMA_JOINID, UNS, UNS_MEASURED_DATASETS, UNS_X_KIND,
                   VAR_FEATURE_ID, VAR_FEATURE_LENGTH, VAR_FEATURE_NAME, VARM_MEASURED)
from .vocab import vocab_hash

__all__ = ["CensusConfig", "CENSUS_ASSAYS", "FULL_LENGTH_ASSAYS", "open_census", "plan_census", "read_plan",
           "download_shard", "gene_table_path", "registry_exclusions"]

logger = logging.getLogger(__name__)

PLAN_SHARD = "shard"
_PLAN_META_KEY = b"cellmamba"
_VAR_COLUMNS = [VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_LENGTH]
_H5_CHUNK = 1 << 18  # elements per HDF5 chunk of the shard's X arrays (1-2 MB)


#: the assay labels the public Census holds (``obs["assay"]``): the inclusion list of the Census
#: schema 2.0 (cellxgene-census docs/cellxgene_census_schema.md, "Assays"), which the pinned
#: 2024-07-01 release follows. A label of ``census.assays`` must be one of these when reading the
#: public Census, so a typo fails at config time instead of selecting nothing.
CENSUS_ASSAYS = (
    "10x 3' transcription profiling", "10x 3' v1", "10x 3' v2", "10x 3' v3", "10x 5' transcription profiling",
    "10x 5' v1", "10x 5' v2", "BD Rhapsody Targeted mRNA", "BD Rhapsody Whole Transcriptome Analysis", "CEL-seq2",
    "DroNc-seq", "Drop-seq", "GEXSCOPE technology", "inDrop", "MARS-seq", "microwell-seq", "sci-RNA-seq", "Seq-Well",
    "Seq-Well S3", "Smart-seq", "Smart-seq v4", "Smart-seq2", "STRT-seq", "TruDrop")
#: of those, the full-length read-count assays: the Census divides their counts by gene length in
#: its normalised layer, as it does for no other assay
FULL_LENGTH_ASSAYS = ("Smart-seq", "Smart-seq v4", "Smart-seq2")


@dataclass(frozen=True)
class CensusConfig:
    """What to read from the Census and how to shard it (config ``census:``)."""

    #: pinned Census release; its gene table is the vocabulary
    census_version: str = "2024-07-01"
    #: SOMA store to read (local path or s3://...); None = the public Census (needs network)
    uri: str | None = None
    #: experiment under census_data ("homo_sapiens"; "Homo sapiens" is accepted too)
    organism: str = "homo_sapiens"
    #: SOMA value filter on census obs ("" = every cell)
    obs_value_filter: str = "is_primary_data == True"
    #: "all" (every assay of the store) or the assay labels (obs "assay") to keep; see :attr:`value_filter`
    assays: str | tuple[str, ...] = "all"
    #: census dataset ids never used (evaluation data must not leak into pretraining)
    exclude_dataset_ids: tuple[str, ...] = ()
    #: collection DOIs whose datasets are excluded too (resolved through census_info/datasets)
    exclude_collection_dois: tuple[str, ...] = ()
    #: an exclusion (DOI or dataset id) that matches nothing is an error (else a warning), except
    #: those in ``unverified_exclusions``
    strict_exclusions: bool = False
    #: exclusions not checked against the pinned release (no network where they were written):
    #: excluded where they match, a warning where they match nothing, even when strict
    unverified_exclusions: tuple[str, ...] = ()
    #: census obs columns carried into the shards (besides soma_joinid and dataset_id)
    obs_columns: tuple[str, ...] = ("cell_type", "assay", "tissue", "disease")
    #: STATIC number of shards (a dry-run of the full reproduction needs no network)
    n_shards: int = 2
    #: cells streamed per chunk; bounds a shard job's memory
    chunk_cells: int = 4096
    #: cap on the number of cells (a seeded random subset); None = all that pass the filter
    max_cells: int | None = None
    #: seed of the max_cells subset
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("exclude_dataset_ids", "exclude_collection_dois", "unverified_exclusions", "obs_columns"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise InputError(f"census config: {name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for name in ("n_shards", "chunk_cells"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"census config: {name} must be a positive integer, got {value!r}")
        if self.max_cells is not None and (not isinstance(self.max_cells, int) or self.max_cells < 1):
            raise InputError(f"census config: max_cells must be a positive integer or null, got {self.max_cells!r}")
        if not isinstance(self.census_version, str) or not self.census_version:
            raise InputError(f"census config: census_version must be a release name, got {self.census_version!r}")
        if self.uri is not None and (not isinstance(self.uri, str) or not self.uri):
            raise InputError(f"census config: uri must be a path/URI or null, got {self.uri!r}")
        if not isinstance(self.obs_value_filter, str):
            raise InputError(f"census config: obs_value_filter must be a string, got {self.obs_value_filter!r}")
        if not isinstance(self.seed, int):
            raise InputError(f"census config: seed must be an integer, got {self.seed!r}")
        if not isinstance(self.strict_exclusions, bool):
            raise InputError(f"census config: strict_exclusions must be true or false, got {self.strict_exclusions!r}")
        stray = sorted(set(self.unverified_exclusions) - set(self.exclude_dataset_ids) - set(self.exclude_collection_dois))
        if stray:
            raise InputError(f"census config: unverified_exclusions {stray} are neither excluded dataset ids nor DOIs")
        if self.assays != "all":
            value = self.assays
            if (isinstance(value, str) or not value or not all(isinstance(v, str) and v for v in value)
                    or len(set(value)) != len(value)):
                raise InputError(f"census config: assays must be \"all\" or a non-empty list of distinct assay "
                                 f"labels, got {value!r}")
            object.__setattr__(self, "assays", tuple(value))
            unknown = sorted(set(self.assays) - set(CENSUS_ASSAYS))
            if self.uri is None and unknown:
                raise InputError(f"census config: assays {unknown} are not assay labels of the public Census "
                                 f"(its labels: {list(CENSUS_ASSAYS)})")
        reserved = {OBS_SOMA_JOINID, OBS_DATASET_ID} & set(self.obs_columns)
        if reserved:
            raise InputError(f"census config: obs_columns must not list {sorted(reserved)} (always written)")

    @classmethod
    def from_workflow(cls, census: Mapping, exclusions: Mapping[str, Mapping | None]) -> "CensusConfig":
        """The config of a census rule: the ``census`` sub-tree, with the exclusions each dataset
        of the registry states (``exclusions``: dataset name -> its ``census_exclusion``;
        :func:`registry_exclusions`) added to the sub-tree's own."""
        stated = registry_exclusions({name: {"census_exclusion": rule} for name, rule in exclusions.items()})
        merged = dict(census)
        for key in ("exclude_collection_dois", "exclude_dataset_ids"):
            merged[key] = sorted(set(merged.get(key) or ()) | set(stated[key]))
        merged["unverified_exclusions"] = stated["unverified_exclusions"]
        return cls(**merged)

    @property
    def value_filter(self) -> str:
        """The SOMA value filter the plan reads with: ``obs_value_filter``, and with a list of
        ``assays`` also ``assay in [...]`` (labels JSON-quoted: they hold single quotes)."""
        parts = [f"({self.obs_value_filter})"] if self.obs_value_filter.strip() else []
        if self.assays != "all":
            parts.append(f"assay in [{', '.join(json.dumps(a) for a in self.assays)}]")
        return " and ".join(parts)

    @property
    def source(self) -> str:
        """The store's name in messages and in shard uns: the uri, or "public"."""
        return self.uri if self.uri is not None else "public"

    @property
    def experiment_name(self) -> str:
        return self.organism.strip().replace(" ", "_").lower()


@contextlib.contextmanager
def open_census(config: CensusConfig):
    """Open the census of ``config`` (``cellxgene_census.open_soma``), failing with a clear error.

    Yields the census root collection. A local ``uri`` that does not exist, or is not a SOMA
    collection, raises :class:`InputError` naming it.
    """
    import cellxgene_census
    import tiledbsoma as soma

    uri = config.uri
    if uri is not None and "://" not in uri and not Path(uri).exists():
        raise InputError(f"census uri {uri!r}: no such directory (expected a SOMA store, e.g. one built "
                         f"by cellmamba.census_store.build_demo_census, or null for the public Census)")
    try:
        census = cellxgene_census.open_soma(census_version=config.census_version, uri=uri)
    except (soma.DoesNotExistError, soma.SOMAError, ValueError, OSError) as exc:
        raise InputError(f"census uri {config.source!r}: could not be opened as a SOMA collection "
                         f"({type(exc).__name__}: {exc})") from exc
    with census:
        yield census


def _experiment(census, config: CensusConfig):
    for key in ("census_data",):
        if key not in census:
            raise InputError(f"census {config.source!r}: no {key!r} collection (not a Census-shaped store)")
    if config.experiment_name not in census["census_data"]:
        raise InputError(f"census {config.source!r}: no organism {config.organism!r} under census_data "
                         f"(found {sorted(census['census_data'].keys())})")
    return census["census_data"][config.experiment_name]


def _census_version_of(census) -> str | None:
    with contextlib.suppress(Exception):
        summary = census["census_info"]["summary"].read().concat().to_pandas()
        hit = summary.loc[summary["label"] == "census_version", "value"]
        return str(hit.iloc[0]) if len(hit) else None
    return None


def _census_datasets(census, config: CensusConfig) -> pd.DataFrame:
    try:
        return census["census_info"]["datasets"].read().concat().to_pandas()
    except KeyError as exc:
        raise InputError(f"census {config.source!r}: no census_info/datasets dataframe") from exc


def _read_var(exp, config: CensusConfig) -> pd.DataFrame:
    """The census gene table in var soma_joinid order (RangeIndex = soma_joinid)."""
    var = exp.ms["RNA"].var.read(column_names=[OBS_SOMA_JOINID, *_VAR_COLUMNS]).concat().to_pandas()
    var = var.sort_values(OBS_SOMA_JOINID).reset_index(drop=True)
    if not np.array_equal(var[OBS_SOMA_JOINID].to_numpy(), np.arange(len(var))):
        raise InputError(f"census {config.source!r}: var soma_joinids are not 0..{len(var) - 1}")
    return var[_VAR_COLUMNS]


def gene_table_path(plan_path: str | os.PathLike) -> Path:
    """Where :func:`plan_census` writes the gene table: ``genes.tsv`` beside the plan."""
    return Path(plan_path).with_name("genes.tsv")


def registry_exclusions(datasets: Mapping[str, Mapping]) -> dict[str, list[str]]:
    """The Census exclusions the dataset registry states (config/datasets.yaml ``census_exclusion``
    of every entry), as census config keys: ``exclude_collection_dois``, ``exclude_dataset_ids``
    and ``unverified_exclusions`` (those of entries with ``verified: false``), each sorted and
    without repeats. An entry without ``census_exclusion`` is an :class:`InputError`; one with
    ``not_in_census`` adds nothing."""
    dois, ids, unverified = set(), set(), set()
    for name, entry in datasets.items():
        rule = entry.get("census_exclusion")
        if not rule:
            raise InputError(f"dataset registry: {name!r} states no census_exclusion (collection_dois / "
                             f"dataset_ids, or not_in_census with the reason)")
        mine = set(rule.get("collection_dois") or ()) | set(rule.get("dataset_ids") or ())
        dois.update(rule.get("collection_dois") or ())
        ids.update(rule.get("dataset_ids") or ())
        if not rule.get("verified", False):
            unverified.update(mine)
    return {"exclude_collection_dois": sorted(dois), "exclude_dataset_ids": sorted(ids),
            "unverified_exclusions": sorted(unverified)}


def _excluded_datasets(datasets: pd.DataFrame, config: CensusConfig) -> tuple[list[str], list[dict]]:
    """Census dataset ids to leave out, and one record per exclusion (what it matched).

    An exclusion that matches nothing is an :class:`InputError` under ``strict_exclusions``
    unless it is unverified; otherwise a warning."""
    known = set(datasets[OBS_DATASET_ID])
    doi_col = datasets.get("collection_doi", pd.Series([""] * len(datasets), index=datasets.index, dtype=str))
    records = []
    # kind: the census_info/datasets column the exclusion is matched in
    for kind, keys in ((OBS_DATASET_ID, config.exclude_dataset_ids), ("collection_doi", config.exclude_collection_dois)):
        for key in keys:
            hit = ([key] if key in known else []) if kind == OBS_DATASET_ID else \
                datasets.loc[doi_col == key, OBS_DATASET_ID].astype(str).tolist()
            verified = key not in config.unverified_exclusions
            records.append({"exclusion": key, "kind": kind, "verified": verified, "datasets": sorted(hit)})
            logger.info("census %s: %s %s -> %d excluded dataset(s) %s", config.source, kind, key, len(hit), hit)
            if not hit:
                message = (f"census {config.source!r}: excluded {kind} {key!r} matches no dataset of the store "
                           f"(a typo excludes nothing)")
                if config.strict_exclusions and verified:
                    raise InputError(message + "; fix it, or mark it unverified in config/datasets.yaml")
                logger.warning(message + ("" if verified else "; not verified against this release"))
    # the dataset ids as given (one not in the store excludes nothing, and is recorded as given)
    excluded = set(config.exclude_dataset_ids).union(*(r["datasets"] for r in records))
    return sorted(excluded), records


def plan_census(config: CensusConfig, out_path: str | os.PathLike) -> pd.DataFrame:
    """Query census obs and split the selected cells into ``config.n_shards`` shards.

    Cells: those passing ``obs_value_filter``, minus excluded datasets (by id and by collection
    DOI), optionally a seeded subset of ``max_cells``; sorted by ``soma_joinid`` and cut into
    contiguous ranges of near-equal size (``np.array_split``).

    Writes (atomically)
    -------------------
    ``out_path``: parquet, columns ``soma_joinid`` (int64), ``dataset_id`` (str), ``shard``
    (int32), with the settings (version, uri, filter, exclusions, vocab hash) in its metadata;
    :func:`gene_table_path` (``genes.tsv`` beside it): the census gene table
    (feature_id, feature_name, feature_length) in var order.

    Returns
    -------
    The plan as a DataFrame.

    Raises
    ------
    InputError
        Unknown uri, missing obs column, no cell selected, or fewer cells than shards.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_census(config) as census:
        exp = _experiment(census, config)
        obs_keys = set(exp.obs.keys())
        missing = [c for c in (OBS_SOMA_JOINID, OBS_DATASET_ID, *config.obs_columns) if c not in obs_keys]
        if missing:
            raise InputError(f"census {config.source!r}: obs has no column(s) {missing} "
                             f"(available: {sorted(obs_keys)})")
        excluded, exclusions = _excluded_datasets(_census_datasets(census, config), config)
        columns = [OBS_SOMA_JOINID, OBS_DATASET_ID] + (["assay"] if "assay" in obs_keys else [])
        try:
            tables = exp.obs.read(value_filter=config.value_filter or None, column_names=columns)
            obs = tables.concat().to_pandas()
        except Exception as exc:  # tiledbsoma raises several types for a bad filter
            raise InputError(f"census {config.source!r}: obs query with value filter "
                             f"{config.value_filter!r} failed ({type(exc).__name__}: {exc})") from exc
        var = _read_var(exp, config)
        store_version = _census_version_of(census)

    if config.uri is not None and store_version not in (None, config.census_version):
        logger.warning("census %s holds census_version %s, config asks for %s", config.source,
                       store_version, config.census_version)
    n_filtered = len(obs)
    obs[OBS_DATASET_ID] = obs[OBS_DATASET_ID].astype(str)
    per_dataset = obs[OBS_DATASET_ID].value_counts()
    for record in exclusions:  # cells passing the filter that each exclusion removed
        record["cells"] = int(per_dataset.reindex(record["datasets"]).fillna(0).sum())
    obs = obs[~obs[OBS_DATASET_ID].isin(excluded)]
    len_kept = len(obs)
    logger.info("census %s: %d cells pass %r; %d left after excluding %d dataset(s)", config.source,
                n_filtered, config.value_filter, len(obs), len(excluded))
    assay_cells = ({str(k): int(v) for k, v in obs["assay"].astype(str).value_counts().sort_index().items()}
                   if "assay" in obs else {})
    if config.assays != "all":
        for label in sorted(set(config.assays) - set(assay_cells)):
            logger.warning("census %s: assay %r selects no cell (after the filter and the exclusions)",
                           config.source, label)
    logger.info("census %s: cells per assay %s", config.source, assay_cells)
    if config.max_cells is not None and len(obs) > config.max_cells:
        rng = np.random.default_rng(config.seed)
        obs = obs.iloc[np.sort(rng.choice(len(obs), size=config.max_cells, replace=False))]
        logger.info("census %s: seeded subset of %d cells (seed %d)", config.source, len(obs), config.seed)
    obs = obs.sort_values(OBS_SOMA_JOINID, kind="stable").reset_index(drop=True)
    if len(obs) == 0:
        raise InputError(f"census {config.source!r}: no cell selected (filter {config.obs_value_filter!r}, "
                         f"{len(excluded)} excluded dataset(s))")
    if len(obs) < config.n_shards:
        raise InputError(f"census {config.source!r}: only {len(obs)} cell(s) selected for n_shards="
                         f"{config.n_shards}; shard {len(obs)} would be empty (lower census.n_shards)")
    shard = np.empty(len(obs), dtype=np.int32)
    for i, part in enumerate(np.array_split(np.arange(len(obs)), config.n_shards)):
        shard[part] = i
    obs[PLAN_SHARD] = shard

    meta = {**{k: v for k, v in asdict(config).items() if k not in ("chunk_cells",)},
            "uri": config.source, "value_filter": config.value_filter, "assay_cells": assay_cells,
            "excluded_dataset_ids": excluded, "exclusions": exclusions, "excluded_cells": n_filtered - len_kept,
            "n_genes": len(var),
            "vocab_hash": vocab_hash(var[VAR_FEATURE_ID]), "store_census_version": store_version}
    table = pa.Table.from_pandas(obs[[OBS_SOMA_JOINID, OBS_DATASET_ID, PLAN_SHARD]], preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _PLAN_META_KEY: json.dumps(meta).encode()})
    with atomic_path(gene_table_path(out_path)) as tmp:
        var.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_path) as tmp:
        pq.write_table(table, tmp)
    sizes = np.bincount(shard, minlength=config.n_shards)
    logger.info("plan %s: %d cells in %d shards (%d-%d cells each), %d genes", out_path, len(obs),
                config.n_shards, sizes.min(), sizes.max(), len(var))
    return obs


def read_plan(plan_path: str | os.PathLike, *, shard_index: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a plan (all rows, or one shard's) and its metadata (the settings it was made with)."""
    import pyarrow.parquet as pq

    path = Path(plan_path)
    if not path.exists():
        raise InputError(f"{path}: no such census plan (run plan_census first)")
    try:
        filters = None if shard_index is None else [(PLAN_SHARD, "=", int(shard_index))]
        table = pq.read_table(path, filters=filters)
        meta = json.loads(pq.read_schema(path).metadata[_PLAN_META_KEY])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: not a cellmamba census plan ({type(exc).__name__}: {exc})") from exc
    plan = table.to_pandas()
    missing = [c for c in (OBS_SOMA_JOINID, OBS_DATASET_ID, PLAN_SHARD) if c not in plan]
    if missing:
        raise CorruptFileError(f"{path}: census plan lacks column(s) {missing}")
    return plan, meta


def _check_plan_matches(meta: dict, config: CensusConfig, plan_path) -> None:
    for key in ("census_version", "organism", "obs_value_filter", "n_shards"):
        if meta.get(key) != getattr(config, key):
            raise InputError(f"{plan_path}: made with {key}={meta.get(key)!r} but the config says "
                             f"{getattr(config, key)!r}; re-run the plan")
    made_with = meta.get("assays", "all")  # JSON holds the tuple as a list
    if (made_with if made_with == "all" else tuple(made_with)) != config.assays:
        raise InputError(f"{plan_path}: made with assays={made_with!r} but the config says "
                         f"{config.assays!r}; re-run the plan")
    if meta.get("uri") != config.source:
        raise InputError(f"{plan_path}: made from census {meta.get('uri')!r}, config reads {config.source!r}")


def _chunk_csr(x_raw, joinids: np.ndarray, n_genes: int, source: str) -> sp.csr_matrix:
    """Read the counts of cells ``joinids`` (sorted) as a CSR matrix (len(joinids), n_genes)."""
    table = x_raw.read(coords=(joinids, slice(None))).tables().concat()
    dim0 = table["soma_dim_0"].to_numpy()
    rows = np.searchsorted(joinids, dim0)
    data = table["soma_data"].to_numpy().astype(np.float32, copy=False)
    check_raw_counts(data, source=f"census {source!r} X['raw'] (cells {joinids[0]}..{joinids[-1]})")
    chunk = sp.csr_matrix((data, (rows, table["soma_dim_1"].to_numpy())), shape=(len(joinids), n_genes))
    chunk.sum_duplicates()
    chunk.sort_indices()
    return chunk


def _iter_chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def download_shard(config: CensusConfig, plan_path: str | os.PathLike, shard_index: int,
                   out_path: str | os.PathLike) -> Path:
    """Stream shard ``shard_index`` of the plan into an h5ad file, ``chunk_cells`` cells at a time.

    The file is first written with obs, var, varm and uns and an empty CSR ``X``; each chunk's
    counts are then appended to ``X`` on disk (anndata's ``sparse_dataset(...).append``), so
    peak memory depends on ``chunk_cells``, not on the shard size.

    Writes (atomically) ``out_path``, the contract's census shard: ``X`` CSR float32 raw counts
    (cells x census genes, rows in ascending soma_joinid); ``obs`` index str(soma_joinid),
    columns soma_joinid, dataset_id (categorical) and ``config.obs_columns``; ``var`` the whole
    census gene table; ``varm["measured"]`` bool (n_genes, n_datasets) from the census
    feature-presence matrix, columns named by ``uns["cellmamba"]["measured_datasets"]``;
    ``uns["cellmamba"]`` the settings.

    Returns
    -------
    ``out_path``.
    """
    import anndata as ad
    import h5py
    from .runlog import progress as _bar

    plan, meta = read_plan(plan_path, shard_index=shard_index)
    _check_plan_matches(meta, config, plan_path)
    if not 0 <= shard_index < config.n_shards:
        raise InputError(f"shard index {shard_index} out of range: the plan has shards 0..{config.n_shards - 1}")
    joinids = np.sort(plan[OBS_SOMA_JOINID].to_numpy(dtype=np.int64))
    if len(joinids) == 0:
        raise InputError(f"{plan_path}: shard {shard_index} is empty (no cell assigned to it)")
    t0 = time.perf_counter()
    with open_census(config) as census:
        exp = _experiment(census, config)
        var = _read_var(exp, config)
        if vocab_hash(var[VAR_FEATURE_ID]) != meta.get("vocab_hash"):
            raise InputError(f"census {config.source!r}: its gene table differs from the one {plan_path} was "
                             f"made with (vocab hash mismatch); re-run the plan")
        obs_cols = [OBS_SOMA_JOINID, OBS_DATASET_ID, *config.obs_columns]
        obs_keys = set(exp.obs.keys())
        missing = [c for c in obs_cols if c not in obs_keys]
        if missing:
            raise InputError(f"census {config.source!r}: obs has no column(s) {missing}")
        obs = exp.obs.read(coords=(joinids,), column_names=obs_cols).concat().to_pandas()
        obs = obs.sort_values(OBS_SOMA_JOINID).reset_index(drop=True)
        if not np.array_equal(obs[OBS_SOMA_JOINID].to_numpy(), joinids):
            raise InputError(f"census {config.source!r}: {len(joinids) - len(obs)} cell(s) of shard {shard_index} "
                             f"of {plan_path} are not in its obs; re-run the plan")

        datasets = _census_datasets(census, config)
        shard_datasets = sorted(obs[OBS_DATASET_ID].astype(str).unique())
        ds_joinid = dict(zip(datasets[OBS_DATASET_ID].astype(str), datasets[OBS_SOMA_JOINID]))
        unknown = [d for d in shard_datasets if d not in ds_joinid]
        if unknown:
            raise InputError(f"census {config.source!r}: dataset id(s) {unknown} of obs are not in census_info/datasets")
        rna = exp.ms["RNA"]
        if "feature_dataset_presence_matrix" not in rna:
            raise InputError(f"census {config.source!r}: ms/RNA has no feature_dataset_presence_matrix")
        rows = np.array([ds_joinid[d] for d in shard_datasets], dtype=np.int64)
        pres = rna["feature_dataset_presence_matrix"].read(coords=(rows, slice(None))).tables().concat()
        measured = np.zeros((len(var), len(shard_datasets)), dtype=bool)
        present = pres["soma_data"].to_numpy().astype(bool)
        ds_col = pd.Index(rows).get_indexer(pres["soma_dim_0"].to_numpy()[present])
        measured[pres["soma_dim_1"].to_numpy()[present], ds_col] = True

        obs.index = obs[OBS_SOMA_JOINID].astype(str).to_numpy()
        obs[OBS_DATASET_ID] = pd.Categorical(obs[OBS_DATASET_ID].astype(str), categories=shard_datasets)
        for col in config.obs_columns:
            if isinstance(obs[col].dtype, pd.CategoricalDtype):
                obs[col] = obs[col].cat.remove_unused_categories()
            elif obs[col].dtype == object or pd.api.types.is_string_dtype(obs[col]):
                obs[col] = obs[col].astype(str).astype("category")
        var_out = var.copy()
        var_out.index = var_out[VAR_FEATURE_ID].astype(str).to_numpy()
        skeleton = ad.AnnData(obs=obs, var=var_out)
        skeleton.varm[VARM_MEASURED] = measured
        skeleton.uns[UNS] = {
            "census_version": config.census_version, "uri": config.source, "organism": config.organism,
            "obs_value_filter": config.obs_value_filter,
            "assays": config.assays if config.assays == "all" else list(config.assays), "shard_index": int(shard_index),
            "n_shards": int(config.n_shards), UNS_MEASURED_DATASETS: list(shard_datasets),
            UNS_X_KIND: "counts", "vocab_hash": meta["vocab_hash"],
            "excluded_dataset_ids": list(meta.get("excluded_dataset_ids", [])),
        }
        n_nonzero = 0
        x_raw = rna.X["raw"]
        with atomic_path(out_path) as tmp:
            skeleton.write_h5ad(tmp)
            del skeleton
            with h5py.File(tmp, "r+") as fh:
                empty = sp.csr_matrix((0, len(var)), dtype=np.float32)
                # int64 indices and indptr (scipy needs both alike): a shard may exceed 2**31 non-zeros
                empty.indptr, empty.indices = empty.indptr.astype(np.int64), empty.indices.astype(np.int64)
                # explicit chunks: h5py would pick (1,)/(1024,) for an empty dataset, and HDF5's
                # index over that many chunks makes memory grow with the shard
                ad.io.write_elem(fh, "X", empty, dataset_kwargs={"chunks": (_H5_CHUNK,)})
                x_disk = ad.io.sparse_dataset(fh["X"])
                bar = _bar(total=len(joinids), unit="cell", desc=f"census shard {shard_index}",
                           mininterval=5.0, disable=None)
                for sl in _iter_chunks(len(joinids), config.chunk_cells):
                    chunk = _chunk_csr(x_raw, joinids[sl], len(var), config.source)
                    x_disk.append(chunk)
                    n_nonzero += chunk.nnz
                    bar.update(chunk.shape[0])
                    if sl.stop == len(joinids) or (10 * sl.stop) // len(joinids) > (10 * sl.start) // len(joinids):
                        logger.info("shard %d: %d of %d cells written", shard_index, sl.stop, len(joinids))
                    del chunk
                bar.close()
                if x_disk.shape != (len(joinids), len(var)):
                    raise RuntimeError(f"shard {shard_index}: wrote X of shape {x_disk.shape}, "
                                       f"expected {(len(joinids), len(var))}")
    logger.info("census shard %d -> %s: %d cells from %d dataset(s), %d genes, %d non-zeros in %.1f s",
                shard_index, out_path, len(joinids), len(shard_datasets), len(var), n_nonzero,
                time.perf_counter() - t0)
    return Path(out_path)

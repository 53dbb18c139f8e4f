"""Readers: each published format -> one AnnData in the standard schema (:mod:`.schema`).

One function per registry ``reader`` name, ``read_<name>(files, *, keys, **options)``:
``files`` maps the registry's logical file names to local paths, ``keys`` names the columns of
the SOURCE file (``label_key``, ``batch_key``, ...), ``options`` are the entry's reader
options. Every reader

- writes obs ``cell_type`` / ``batch`` / ``split`` / ``condition`` / ``modality`` as its task
  needs (categoricals of str), var ``gene_name`` (symbols) and ``gene_id`` (Ensembl ids)
  where the source has them, and ``uns["cellmamba"]["x_kind"]``;
- keeps every original obs / var column; an original column that a standard column would
  overwrite with different content is kept as ``source_<name>``;
- puts raw counts in layer ``counts`` only where the publication provides counts (never
  expm1 of log data);
- leaves obs_names unique (an error names the file otherwise).

:func:`read_dataset` dispatches by name and checks the result with
:func:`~cellmamba.datasets.schema.validate_standard`. Formats: ../shared/DATASETS.md.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..conditions import CTRL, invalid_conditions
from ..errors import CorruptFileError, InputError
from ..io import read_h5ad_checked
from ..keys import (LAYER_COUNTS, OBS_BATCH, OBS_CELL_TYPE, OBS_CONDITION, OBS_MODALITY, OBS_PSEUDOTIME, OBS_SPLIT,
                    OBS_TIME, UNS, UNS_READER, UNS_X_KIND, VAR_FEATURE_TYPE, VAR_MODALITY)
from .schema import (UNS_SIMULATED, VAR_GENE_ID, VAR_GENE_NAME, X_KINDS, check_finite, check_log1p_norm,
                     check_normalized, check_size, validate_standard)

if TYPE_CHECKING:  # annotations only: anndata is imported where it is used
    import anndata as ad

__all__ = ["READERS", "read_dataset", "read_pbmc10k", "read_annotation_pair", "read_norman", "read_bmmc",
           "read_pbmc68k_reduced", "read_user_h5ad", "read_sim_integration", "read_sim_perturbation",
           "read_sim_multiome", "read_hsmm", "stratified_split",
           "VAR_FEATURE_TYPE", "VAR_MODALITY", "FEATURE_MODALITY", "UNS_READER", "USER_CONFIG_KEY"]

log = logging.getLogger(__name__)

#: BMMC feature type -> modality
FEATURE_MODALITY = {"GEX": "rna", "ADT": "protein", "ATAC": "atac"}
_SPLITS_ANNOTATION = ("reference", "query")


# --------------------------------------------------------------------------- helpers
def _file(files: Mapping[str, os.PathLike], name: str, reader: str) -> Path:
    if name not in files:
        raise InputError(f"reader {reader!r}: no input file {name!r}; got {sorted(files)} (the registry entry's "
                         f"'files' must name {name!r})")
    return Path(files[name])


def _key(keys: Mapping, name: str, reader: str, *, required: bool = True) -> str | None:
    value = (keys or {}).get(name)
    if value is None and required:
        raise InputError(f"reader {reader!r}: keys.{name} is required (the source column to read); got keys "
                         f"{dict(keys or {})}")
    return value


def _obs_column(adata, key: str, path, *, what: str) -> pd.Series:
    if key not in adata.obs:
        raise InputError(f"{path}: obs has no column {key!r} ({what}); found {list(adata.obs.columns)}")
    col = adata.obs[key]
    if col.isna().any():
        raise InputError(f"{path}: obs[{key!r}] ({what}) has {int(col.isna().sum())} missing values")
    return col


def _var_column(adata, key: str, path, *, what: str) -> pd.Series:
    if key not in adata.var:
        raise InputError(f"{path}: var has no column {key!r} ({what}); found {list(adata.var.columns)}")
    return adata.var[key]


def _categorical(values) -> pd.Categorical:
    values = np.asarray(values).astype(str)
    return pd.Categorical(values, categories=sorted(set(values)))


def _set_column(frame: pd.DataFrame, key: str, values, *, source) -> None:
    """Set a standard column; an original column with different content is kept as ``source_<key>``."""
    new = _categorical(values)
    if key in frame.columns:
        old = frame[key]
        same = len(old) == len(new) and bool((np.asarray(old.astype(str)) == np.asarray(new.astype(str))).all())
        if not same:
            target = f"source_{key}"
            if target in frame.columns:
                raise InputError(f"{source}: columns {key!r} and {target!r} both exist; cannot keep the original "
                                 f"{key!r} next to the standard one")
            frame[target] = old
            log.info("%s: original column %r kept as %r (the standard %r replaces it)", source, key, target, key)
    frame[key] = new


def _set_uns(adata, *, x_kind: str, reader: str, simulated: bool = False) -> None:
    info = dict(adata.uns.get(UNS, {}))
    info.update({UNS_X_KIND: x_kind, UNS_READER: reader, UNS_SIMULATED: bool(simulated)})
    adata.uns[UNS] = info


def _check_unique_obs(adata, source) -> None:
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()[:5].tolist()
        raise InputError(f"{source}: obs_names are not unique (e.g. {dup}); expected one row per cell")


def _check_log_normalized(X, source) -> None:
    check_log1p_norm(X, source)


def _check_counts(X, source, *, what: str, block: int = 1 << 24) -> None:
    """Raw counts: non-negative integers (checked in blocks of values, so memory stays bounded)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    for start in range(0, data.size, block):
        part = data[start:start + block]
        if (part < 0).any() or (np.mod(part, 1) != 0).any():
            raise InputError(f"{source}: {what} holds non-integer or negative values; expected raw counts")


def _gene_columns(adata, *, symbols, ids=None) -> None:
    """var ``gene_name`` (and ``gene_id``); a differing original column is kept as ``source_<name>``."""
    for key, values in ((VAR_GENE_NAME, symbols), (VAR_GENE_ID, ids)):
        if values is None:
            continue
        values = np.asarray(values).astype(str)
        if key in adata.var.columns and not (adata.var[key].astype(str).to_numpy() == values).all():
            adata.var[f"source_{key}"] = adata.var[key]
        adata.var[key] = values
    if adata.var.index.name in adata.var.columns:  # h5ad cannot hold an index named like a column
        adata.var.index.name = None


def _looks_ensembl(names) -> bool:
    names = pd.Index(names).astype(str)
    return len(names) > 0 and bool(names.str.match(r"^ENS[A-Z]*G\d+").all())


def stratified_split(labels, *, query_fraction: float, seed: int) -> np.ndarray:
    """A seeded reference / query split that keeps every class's proportion.

    Per class (classes in sorted order), ``round(query_fraction * n)`` cells, at least 1 and at
    most n - 1 when n >= 2 (a single-cell class stays in the reference), drawn without
    replacement with ``numpy.random.default_rng(seed)``.

    Returns
    -------
    (n_cells,) array of ``"reference"`` / ``"query"``.
    """
    if not 0 < query_fraction < 1:
        raise InputError(f"query_fraction {query_fraction!r}: expected a fraction in (0, 1)")
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "reference", dtype=object)
    for label in sorted(set(labels)):
        idx = np.flatnonzero(labels == label)
        n_query = int(round(query_fraction * len(idx)))
        if len(idx) >= 2:
            n_query = min(max(n_query, 1), len(idx) - 1)
        else:
            n_query = 0
        split[rng.permutation(idx)[:n_query]] = "query"
    return split.astype(str)


# --------------------------------------------------------------------------- PBMC 10k
_PICKLE_ROOTS = {"numpy", "pandas"}
_PICKLE_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "slice", "range", "complex", "bytearray",
                    "object", "int", "float", "str", "bool", "bytes"}


def _safe_unpickler():
    """An Unpickler that only builds numpy / pandas / builtin containers (pandas' compat renames kept)."""
    try:  # pandas' Unpickler maps class locations of old pandas versions (the pickle dates from 2018)
        from pandas.compat.pickle_compat import Unpickler as Base
    except ImportError:  # pragma: no cover - pandas without the compat module
        Base = pickle.Unpickler

    class SafeUnpickler(Base):
        def find_class(self, module, name):
            root = module.split(".")[0]
            allowed = (root in _PICKLE_ROOTS or (module in ("builtins", "__builtin__") and name in _PICKLE_BUILTINS)
                       or (module in ("copyreg", "copy_reg") and name == "_reconstructor")
                       or (module in ("collections",) and name == "OrderedDict")
                       or (module == "datetime"))
            if not allowed:
                raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy / pandas objects)")
            return super().find_class(module, name)

    return SafeUnpickler


def _read_metadata_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            try:
                data = _safe_unpickler()(fh).load()
            except UnicodeDecodeError:  # a Python 2 pickle of numpy arrays (what pandas.read_pickle retries too)
                fh.seek(0)
                data = _safe_unpickler()(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected scvi-tools' pbmc_metadata.pickle)") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: not a readable pbmc_metadata.pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a pickled dict, found {type(data).__name__}")
    need = ("barcodes", "design", "raw_qc", "normalized_qc", "qc_pc", "clusters", "list_clusters")
    missing = [k for k in need if k not in data]
    if missing:
        raise InputError(f"{path}: metadata dict lacks key(s) {missing}; expected {list(need)}")
    if not isinstance(data["barcodes"], pd.DataFrame):
        raise InputError(f"{path}: metadata['barcodes'] is a {type(data['barcodes']).__name__}; expected a "
                         "DataFrame whose index holds the barcodes")
    return data


def _read_10x_v2_tar(path: Path):
    """scanpy.read_10x_mtx(var_names="gene_ids") of the mtx folder inside a 10x v2 tarball."""
    import anndata as ad
    from scipy.io import mmread

    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise CorruptFileError(f"{path}: not a readable tar archive ({exc}); expected a 10x "
                               "filtered_gene_bc_matrices.tar.gz") from exc
    with tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        folders = sorted({str(Path(n).parent) for n in names if Path(n).name == "matrix.mtx"})
        if len(folders) != 1:
            raise InputError(f"{path}: expected exactly one folder with matrix.mtx (10x v2 layout "
                             f"filtered_gene_bc_matrices/GRCh38/{{matrix.mtx,genes.tsv,barcodes.tsv}}); found "
                             f"{folders or 'none'} among {names[:10]}")

        def member(name: str) -> bytes:
            full = f"{folders[0]}/{name}"
            if full not in names:
                raise InputError(f"{path}: member {full!r} missing (10x v2 layout needs matrix.mtx, genes.tsv, "
                                 "barcodes.tsv)")
            return tar.extractfile(full).read()

        try:
            X = sp.csr_matrix(mmread(io.BytesIO(member("matrix.mtx"))).T, dtype=np.float32)
            genes = pd.read_csv(io.BytesIO(member("genes.tsv")), sep="\t", header=None, dtype=str)
            barcodes = pd.read_csv(io.BytesIO(member("barcodes.tsv")), sep="\t", header=None, dtype=str)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{path}: malformed 10x matrix files in {folders[0]} ({exc})") from exc
    if genes.shape[1] < 2 or X.shape != (len(barcodes), len(genes)):
        raise CorruptFileError(f"{path}: matrix.mtx is {X.shape[::-1]} (genes x cells) but genes.tsv has "
                               f"{len(genes)} rows x {genes.shape[1]} columns and barcodes.tsv {len(barcodes)} rows")
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes[0].to_numpy(), dtype=str)),
                       var=pd.DataFrame({"gene_symbols": genes[1].to_numpy()},
                                        index=pd.Index(genes[0].to_numpy(), dtype=str)))
    adata.var_names_make_unique()
    # scanpy.pp.filter_cells / filter_genes(min_counts=1), as scvi-tools' _load_dataset_10x
    cell_counts = np.asarray(adata.X.sum(axis=1)).ravel()
    adata = adata[cell_counts >= 1].copy()
    adata.obs["n_counts"] = cell_counts[cell_counts >= 1].astype(np.float32)
    gene_counts = np.asarray(adata.X.sum(axis=0)).ravel()
    adata = adata[:, gene_counts >= 1].copy()
    adata.var["n_counts"] = gene_counts[gene_counts >= 1].astype(np.float32)
    return adata


def read_pbmc10k(files: Mapping[str, os.PathLike], *, keys: Mapping) -> "ad.AnnData":
    """PBMC 10k as scvi-tools' ``pbmc_dataset()`` builds it (DATASETS.md section 1), without scvi.

    Steps of ``scvi.data._built_in_data._pbmc._load_pbmc_dataset`` (pinned: scvi-tools < 1.0
    semantics, var ``gene_symbols`` kept):

    1. each 10x v2 tarball read with var_names = gene ids, ``var_names_make_unique``, cells and
       genes with < 1 count dropped;
    2. pbmc8k then pbmc4k concatenated (inner join of genes): **batch 0 = pbmc8k, 1 = pbmc4k**;
    3. obs_names = the raw barcodes; cells kept in the order of
       ``pbmc_metadata["barcodes"].index``, those found in the data. A barcode in both files
       resolves to the pbmc4k cell (scvi-tools' dict keeps the last occurrence; logged);
    4. metadata rows of barcodes ending in "11" dropped (49 cells filtered on the 10x website);
    5. genes: ``gene_info_pbmc.csv["ENSG"]`` in that order, those present;
    6. obs ``labels`` = ``clusters``, ``str_labels`` = ``list_clusters[labels]``; obsm
       ``design``, ``raw_qc``, ``normalized_qc``, ``qc_pc``; uns ``cell_types``; var ``n_counts``.

    Parameters
    ----------
    files
        ``gene_info`` (gene_info_pbmc.csv), ``metadata`` (pbmc_metadata.pickle), ``pbmc8k`` and
        ``pbmc4k`` (``*_filtered_gene_bc_matrices.tar.gz``).
    keys
        ``label_key`` (``str_labels``), ``batch_key`` (``batch``) of the scvi-tools object.

    Returns
    -------
    AnnData (n_cells, n_genes): X float32 CSR raw UMI counts (x_kind ``counts``) and the same in
    layer ``counts``; obs ``cell_type``, ``batch`` ("0" / "1"); var index Ensembl ids,
    ``gene_name`` (= ``gene_symbols``), ``gene_id``. The real files give 11,990 x 3,346.
    """
    import anndata as ad

    label_key = _key(keys, "label_key", "pbmc10k")
    batch_key = _key(keys, "batch_key", "pbmc10k")
    gene_info_path = _file(files, "gene_info", "pbmc10k")
    meta_path = _file(files, "metadata", "pbmc10k")
    parts = [_read_10x_v2_tar(_file(files, name, "pbmc10k")) for name in ("pbmc8k", "pbmc4k")]
    try:
        gene_info = pd.read_csv(gene_info_path, sep=",")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorruptFileError(f"{gene_info_path}: not a readable CSV ({exc}); expected gene_info.csv with an "
                               "'ENSG' column") from exc
    if "ENSG" not in gene_info:
        raise InputError(f"{gene_info_path}: no column 'ENSG'; found {list(gene_info.columns)}")
    meta = _read_metadata_pickle(meta_path)

    barcodes = np.concatenate([p.obs_names.to_numpy() for p in parts]).astype(str)
    adata = ad.concat(parts, join="inner", merge="same", label="batch", keys=["0", "1"], index_unique="-")
    for i, part in enumerate(parts):  # AnnData.concatenate keeps differing var columns per batch
        adata.var[f"n_counts-{i}"] = part.var["n_counts"].reindex(adata.var_names).to_numpy()
    adata.obs_names = barcodes
    position = dict(zip(barcodes, np.arange(len(barcodes))))  # last occurrence wins, as in scvi-tools
    n_shared = len(barcodes) - len(position)
    if n_shared:
        log.warning("pbmc10k: %d barcodes occur in both pbmc8k and pbmc4k; as in scvi-tools they resolve to "
                    "the pbmc4k cell", n_shared)
    meta_barcodes = meta["barcodes"].index.to_numpy().ravel().astype(str)
    cells = [position[b] for b in meta_barcodes if b in position]
    adata = adata[np.asarray(cells, dtype=np.int64)].copy()
    if not adata.obs_names.is_unique:
        raise CorruptFileError(f"{meta_path}: metadata['barcodes'] lists a barcode twice; the cells would be "
                               "duplicated")
    keep_meta = np.asarray([not b.endswith("11") for b in meta_barcodes], dtype=bool)
    if int(keep_meta.sum()) != adata.n_obs:
        raise InputError(f"{meta_path}: {adata.n_obs} of its barcodes are in the 10x matrices but "
                         f"{int(keep_meta.sum())} do not end in '11'; scvi-tools' loader needs the two to agree "
                         "(wrong pickle for these tarballs?)")
    genes = [g for g in gene_info["ENSG"].astype(str) if g in set(adata.var_names)]
    if not genes:
        raise InputError(f"{gene_info_path}: none of its ENSG ids is a gene of the 10x matrices")
    adata = adata[:, genes].copy()

    for name in ("design", "raw_qc", "normalized_qc", "qc_pc"):
        value = meta[name][keep_meta] if isinstance(meta[name], pd.DataFrame) else np.asarray(meta[name])[keep_meta]
        if isinstance(value, pd.DataFrame):
            value = value.copy()
            value.index = adata.obs_names
            value.columns = value.columns.astype(str)
        adata.obsm[name] = value
    labels = np.asarray(meta["clusters"]).ravel()[keep_meta].astype(np.int64)
    cell_types = np.asarray(meta["list_clusters"]).astype(str)
    if labels.size and (labels.min() < 0 or labels.max() >= len(cell_types)):
        raise InputError(f"{meta_path}: clusters range over [{labels.min()}, {labels.max()}] but list_clusters has "
                         f"{len(cell_types)} names")
    adata.obs["batch"] = adata.obs["batch"].astype(np.int64)
    adata.obs["labels"] = labels
    adata.obs["str_labels"] = cell_types[labels]
    adata.uns["cell_types"] = cell_types
    adata.var["n_counts"] = np.asarray(adata.X.sum(axis=0)).ravel()

    source = "pbmc10k"
    _set_column(adata.obs, OBS_CELL_TYPE, _obs_column(adata, label_key, source, what="label").to_numpy(),
                source=source)
    _set_column(adata.obs, OBS_BATCH, _obs_column(adata, batch_key, source, what="batch").to_numpy(), source=source)
    _gene_columns(adata, symbols=adata.var["gene_symbols"], ids=adata.var_names)
    adata.layers[LAYER_COUNTS] = adata.X.copy()
    _set_uns(adata, x_kind="counts", reader="pbmc10k")
    log.info("pbmc10k: %d cells (%d pbmc8k, %d pbmc4k) x %d genes", adata.n_obs,
             int((adata.obs[OBS_BATCH] == "0").sum()), int((adata.obs[OBS_BATCH] == "1").sum()), adata.n_vars)
    return adata


# --------------------------------------------------------------------------- annotation pairs
def read_annotation_pair(files: Mapping[str, os.PathLike], *, keys: Mapping) -> "ad.AnnData":
    """Reference + query h5ad of an annotation benchmark (myeloid, MS, hPancreas; DATASETS.md 2-4).

    Parameters
    ----------
    files
        ``reference`` and ``query`` h5ad files with identical genes in identical order.
    keys
        ``label_key`` (myeloid ``cell_type``; MS ``Factor Value[inferred cell type - authors
        labels]``; hPancreas ``Celltype``); ``batch_key`` (obs column of both files, or None:
        batch = the split); ``gene_name_key`` (var column holding symbols, or None: the var
        index holds them).

    Returns
    -------
    AnnData (n_reference + n_query, n_genes), reference cells first: X log-normalised as
    published (x_kind ``log1p_norm``; no counts layer, none is published); obs ``cell_type``,
    ``batch``, ``split`` (``reference`` / ``query``); var ``gene_name`` and, where the var
    index holds Ensembl ids (MS), ``gene_id``. Classes found only in the query are kept. Where
    the two files share obs_names, every name gets ``-reference`` / ``-query`` appended.
    """
    import anndata as ad

    reader = "annotation_pair"
    label_key = _key(keys, "label_key", reader)
    batch_key = _key(keys, "batch_key", reader, required=False)
    gene_key = _key(keys, "gene_name_key", reader, required=False)
    parts, genes = [], []
    for split in _SPLITS_ANNOTATION:
        path = _file(files, split, reader)
        part = read_h5ad_checked(path)
        labels = _obs_column(part, label_key, path, what="cell-type label")
        batch = _obs_column(part, batch_key, path, what="batch").to_numpy() if batch_key else split
        symbols = _var_column(part, gene_key, path, what="gene symbols") if gene_key else part.var_names
        _check_log_normalized(part.X, path)
        _set_column(part.obs, OBS_CELL_TYPE, labels.to_numpy(), source=path)
        _set_column(part.obs, OBS_BATCH, np.broadcast_to(np.asarray(batch, dtype=object), (part.n_obs,)), source=path)
        _set_column(part.obs, OBS_SPLIT, np.full(part.n_obs, split), source=path)
        parts.append(part)
        genes.append((path, pd.Index(part.var_names).astype(str), pd.Index(symbols).astype(str)))
    (ref_path, ref_index, ref_symbols), (query_path, query_index, query_symbols) = genes
    for what, a, b in (("var_names", ref_index, query_index), (f"var[{gene_key!r}]" if gene_key else "symbols",
                                                                ref_symbols, query_symbols)):
        if len(a) != len(b) or not (a == b).all():
            pos = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            raise InputError(f"{query_path}: its {what} differ from those of {ref_path} ({len(b)} vs {len(a)} "
                             f"genes; first difference at position {pos}: "
                             f"{b[pos] if pos < len(b) else None!r} vs {a[pos] if pos < len(a) else None!r}); "
                             "the reference and query must have identical genes in identical order")
    shared = parts[0].obs_names.intersection(parts[1].obs_names)
    if len(shared):
        log.info("%s / %s: %d shared obs_names; appending -reference / -query to every name",
                 ref_path, query_path, len(shared))
        for part, split in zip(parts, _SPLITS_ANNOTATION):
            part.obs_names = [f"{n}-{split}" for n in part.obs_names]
    # genes are identical, so the join only matters for obs columns: keep every file's columns;
    # var columns: the reference's, plus any only the query has
    adata = ad.concat(parts, join="outer", merge="first")
    for key in (OBS_CELL_TYPE, OBS_BATCH, OBS_SPLIT):
        adata.obs[key] = _categorical(adata.obs[key])
    _gene_columns(adata, symbols=ref_symbols, ids=ref_index if _looks_ensembl(ref_index) else None)
    _check_unique_obs(adata, f"{ref_path} + {query_path}")
    _set_uns(adata, x_kind="log1p_norm", reader=reader)
    only_query = sorted(set(parts[1].obs[OBS_CELL_TYPE].astype(str)) - set(parts[0].obs[OBS_CELL_TYPE].astype(str)))
    if only_query:
        log.info("%s: classes only in the query (kept): %s", query_path, only_query)
    log.info("annotation pair: %d reference + %d query cells x %d genes", parts[0].n_obs, parts[1].n_obs,
             adata.n_vars)
    return adata


# --------------------------------------------------------------------------- Norman
def _check_conditions(conditions: pd.Series, path, key: str) -> None:
    bad = invalid_conditions(conditions.astype(str))
    if bad:
        raise InputError(f"{path}: obs[{key!r}] has values {bad[:5]}; expected 'ctrl', 'A+ctrl', 'ctrl+B' or 'A+B' "
                         "(GEARS format)")
    if CTRL not in set(conditions.astype(str)):
        raise InputError(f"{path}: obs[{key!r}] has no {CTRL!r} cells (the control population)")


def read_norman(files: Mapping[str, os.PathLike], *, keys: Mapping) -> "ad.AnnData":
    """Norman 2019 as GEARS 0.0.2 publishes it (``norman/perturb_processed.h5ad``, DATASETS.md 5).

    Parameters
    ----------
    files
        ``h5ad``: perturb_processed.h5ad.
    keys
        ``condition_key`` (``condition``), ``gene_name_key`` (``gene_name``).

    Returns
    -------
    AnnData as published (91,205 x 5,045): X = log1p(normalize_total(counts)) at scanpy's
    default target (the median total), which is not cellmamba's ``log1p_norm`` (target 1e4):
    x_kind ``other``, with layer ``counts`` (raw counts, required). obs ``condition`` exactly as
    published (``ctrl``, ``A+ctrl``, ``ctrl+B``, ``A+B``; no reordering); var ``gene_name``,
    ``gene_id`` (the Ensembl var index). No split: GEARS' simulation split is made downstream.
    obs ``cell_type`` is the file's (``A549``, a known mislabel: the cells are K562).
    """
    path = _file(files, "h5ad", "norman")
    return _norman_standard(read_h5ad_checked(path), path, keys=keys, reader="norman")


def _norman_standard(adata, path, *, keys: Mapping, reader: str, simulated: bool = False):
    """GEARS' perturb_processed.h5ad layout (read from ``path``, or simulated) -> the standard schema."""
    condition_key = _key(keys, "condition_key", reader)
    gene_key = _key(keys, "gene_name_key", reader)
    conditions = _obs_column(adata, condition_key, path, what="perturbation condition")
    _check_conditions(conditions, path, condition_key)
    symbols = _var_column(adata, gene_key, path, what="gene symbols")
    if LAYER_COUNTS not in adata.layers:
        raise InputError(f"{path}: layer {LAYER_COUNTS!r} (raw counts) missing; found layers {list(adata.layers)} "
                         "(GEARS' perturb_processed.h5ad has it)")
    _check_counts(adata.layers[LAYER_COUNTS], path, what=f"layer {LAYER_COUNTS!r}")
    if condition_key != OBS_CONDITION:
        _set_column(adata.obs, OBS_CONDITION, conditions.to_numpy(), source=path)
    else:
        adata.obs[OBS_CONDITION] = _categorical(conditions)
    _gene_columns(adata, symbols=symbols, ids=adata.var_names if _looks_ensembl(adata.var_names) else None)
    _check_unique_obs(adata, path)
    _set_uns(adata, x_kind="other", reader=reader, simulated=simulated)
    adata.uns[UNS]["x_description"] = "log1p(normalize_total(counts)) at scanpy's default target (median total)"
    log.info("%s: %d cells, %d conditions, %d genes", path, adata.n_obs, conditions.nunique(), adata.n_vars)
    return adata


# --------------------------------------------------------------------------- BMMC
def read_bmmc(files: Mapping[str, os.PathLike], *, keys: Mapping) -> "ad.AnnData":
    """NeurIPS 2021 BMMC CITE-seq or multiome h5ad (GSE194122, DATASETS.md 6), both modalities.

    Parameters
    ----------
    files
        ``h5ad``: the (gunzipped) ``GSE194122_openproblems_neurips2021_{cite,multiome}_BMMC_processed.h5ad``.
    keys
        ``label_key`` (``cell_type``), ``batch_key`` (``batch``, e.g. ``s1d1``), ``feature_type_key``
        (``feature_types``: GEX / ADT / ATAC), ``gene_id_key`` (``gene_id``), ``donor_key``
        (``DonorID``, checked to exist; kept as is).

    Returns
    -------
    AnnData with every feature: X as published (normalised, not counts: x_kind ``other``),
    layer ``counts`` (raw, required); obs ``cell_type``, ``batch``, ``modality`` (the paired
    assay, e.g. ``protein+rna``); var ``feature_type`` (the source's types), ``modality``
    (``rna`` / ``protein`` / ``atac``), ``gene_name`` (the var index: symbols, ADT names or
    peaks), ``gene_id`` (the source column). The towers are split downstream by var ``modality``.
    """
    path = _file(files, "h5ad", "bmmc")
    return _bmmc_standard(read_h5ad_checked(path), path, keys=keys, reader="bmmc")


def _bmmc_standard(adata, path, *, keys: Mapping, reader: str, simulated: bool = False):
    """The NeurIPS 2021 BMMC layout (read from ``path``, or simulated) -> the standard schema."""
    label_key = _key(keys, "label_key", reader)
    batch_key = _key(keys, "batch_key", reader)
    type_key = _key(keys, "feature_type_key", reader)
    id_key = _key(keys, "gene_id_key", reader, required=False)
    donor_key = _key(keys, "donor_key", reader, required=False)
    labels = _obs_column(adata, label_key, path, what="cell-type label")
    batch = _obs_column(adata, batch_key, path, what="batch")
    if donor_key:
        _obs_column(adata, donor_key, path, what="donor")
    types = _var_column(adata, type_key, path, what="feature types").astype(str)
    unknown = sorted(set(types) - set(FEATURE_MODALITY))
    if unknown:
        raise InputError(f"{path}: var[{type_key!r}] has values {unknown}; expected {sorted(FEATURE_MODALITY)}")
    if types.nunique() < 2:
        raise InputError(f"{path}: var[{type_key!r}] holds only {sorted(set(types))}; a paired multi-omics file "
                         "has two feature types")
    if LAYER_COUNTS not in adata.layers:
        raise InputError(f"{path}: layer {LAYER_COUNTS!r} (raw counts) missing; found layers {list(adata.layers)}")
    _check_counts(adata.layers[LAYER_COUNTS], path, what=f"layer {LAYER_COUNTS!r}")
    ids = _var_column(adata, id_key, path, what="gene ids") if id_key else None
    _set_column(adata.obs, OBS_CELL_TYPE, labels.to_numpy(), source=path)
    _set_column(adata.obs, OBS_BATCH, batch.to_numpy(), source=path)
    modalities = sorted({FEATURE_MODALITY[t] for t in set(types)})
    _set_column(adata.obs, OBS_MODALITY, np.full(adata.n_obs, "+".join(modalities)), source=path)
    _set_column(adata.var, VAR_FEATURE_TYPE, types.to_numpy(), source=path)
    _set_column(adata.var, VAR_MODALITY, types.map(FEATURE_MODALITY).to_numpy(), source=path)
    _gene_columns(adata, symbols=adata.var_names, ids=ids)
    _check_unique_obs(adata, path)
    _set_uns(adata, x_kind="other", reader=reader, simulated=simulated)
    log.info("%s: %d cells x %s", path, adata.n_obs, dict(types.value_counts()))
    return adata


# --------------------------------------------------------------------------- trajectory (HSMM)
def _numeric_obs(adata, key: str, path, *, what: str, nan_ok: bool) -> np.ndarray:
    """float64 (n_obs,) of obs[key] (numbers, or strings of numbers such as HSMMSingleCell's Hours
    categories); InputError naming the file and the column otherwise."""
    if key not in adata.obs:
        raise InputError(f"{path}: obs has no column {key!r} ({what}); found {list(adata.obs.columns)}")
    col = adata.obs[key]
    values = pd.to_numeric(col.astype(str) if not pd.api.types.is_numeric_dtype(col) else col, errors="coerce")
    bad = values.isna() & ~(col.isna() if nan_ok else False)
    if bad.any():
        first = col[bad.to_numpy()].iloc[0]
        raise InputError(f"{path}: obs[{key!r}] ({what}) has {int(bad.sum())} values that are not numbers "
                         f"(e.g. {first!r})" + ("" if nan_ok else "; every cell needs one"))
    return values.to_numpy(np.float64)


def _set_numeric(frame: pd.DataFrame, key: str, values: np.ndarray, *, source) -> None:
    """Set a numeric standard column; an original column of that name with other values is kept as ``source_<key>``."""
    if key in frame.columns:
        old = pd.to_numeric(frame[key], errors="coerce").to_numpy(np.float64)
        if not np.array_equal(old, values, equal_nan=True):
            if f"source_{key}" in frame.columns:
                raise InputError(f"{source}: columns {key!r} and 'source_{key}' both exist; cannot keep the original "
                                 f"{key!r} next to the standard one")
            frame[f"source_{key}"] = frame[key]
    frame[key] = values


def read_hsmm(files: Mapping[str, os.PathLike], *, keys: Mapping) -> "ad.AnnData":
    """The HSMM myoblast differentiation time course (Trapnell et al. 2014) as the Bioconductor
    package HSMMSingleCell ships it, converted to h5ad (resources/README.md).

    Parameters
    ----------
    files
        ``h5ad``: cells x genes, X = FPKM (Cufflinks), var index = versioned Ensembl ids.
    keys
        ``pseudotime_key`` (``Pseudotime``: Monocle's), ``time_key`` (``Hours``: 0 / 24 / 48 / 72,
        the measured time; numbers or their strings), ``gene_name_key`` (``gene_short_name``).

    Returns
    -------
    AnnData (n_cells, n_genes): X as published (FPKM, x_kind ``normalized``: no counts exist for
    it, so methods that need counts refuse it); obs ``pseudotime`` (float, NaN = on no trajectory)
    and ``time`` (float hours) beside every original column; var ``gene_name`` (symbols) and
    ``gene_id`` (the Ensembl ids without their version).
    """
    reader = "hsmm"
    path = _file(files, "h5ad", reader)
    pseudotime_key = _key(keys, "pseudotime_key", reader)
    time_key = _key(keys, "time_key", reader)
    name_key = _key(keys, "gene_name_key", reader)
    adata = read_h5ad_checked(path)
    check_size(adata, path)
    check_finite(adata.X, path)
    check_normalized(adata.X, path)
    pseudotime = _numeric_obs(adata, pseudotime_key, path, what="published pseudotime", nan_ok=True)
    hours = _numeric_obs(adata, time_key, path, what="measured time", nan_ok=False)
    symbols = _var_column(adata, name_key, path, what="gene symbols").astype(str)
    ids = pd.Index(adata.var_names).str.replace(r"\.\d+$", "", regex=True) if _looks_ensembl(adata.var_names) else None
    if ids is not None and ids.duplicated().any():
        raise InputError(f"{path}: {int(ids.duplicated().sum())} Ensembl ids repeat once their versions are dropped "
                         f"(e.g. {ids[ids.duplicated()][0]!r})")
    _set_numeric(adata.obs, OBS_PSEUDOTIME, pseudotime, source=path)
    _set_numeric(adata.obs, OBS_TIME, hours, source=path)
    _gene_columns(adata, symbols=symbols.to_numpy(), ids=ids)
    _check_unique_obs(adata, path)
    _set_uns(adata, x_kind="normalized", reader=reader)
    adata.uns[UNS]["x_description"] = "FPKM (Cufflinks) of full-length reads, as HSMMSingleCell ships it; not counts"
    log.info("%s: %d cells x %d genes, time points %s, %d cells with a pseudotime", path, adata.n_obs, adata.n_vars,
             sorted(set(hours.tolist())), int(np.isfinite(pseudotime).sum()))
    return adata


# --------------------------------------------------------------------------- demo and user data
def read_pbmc68k_reduced(files: Mapping[str, os.PathLike], *, keys: Mapping, query_fraction: float = 0.3,
                         seed: int = 0) -> "ad.AnnData":
    """scanpy's bundled ``pbmc68k_reduced`` (700 x 765) as an annotation demo; no download.

    The data have no batches, so a reference / query split is made: :func:`stratified_split`
    by ``keys["label_key"]`` (``bulk_labels``, 10 types) with ``query_fraction`` and ``seed``.

    Returns
    -------
    AnnData (700, 765): X scaled (z-scored) as bundled, ``.raw`` log-normalised (x_kind
    ``scaled``; no counts); obs ``cell_type``, ``split``, ``batch`` (= the split); var
    ``gene_name``.
    """
    import scanpy as sc

    reader = "pbmc68k_reduced"
    if files:
        raise InputError(f"reader {reader!r}: takes no files (the data ship with scanpy); got {sorted(files)}")
    label_key = _key(keys, "label_key", reader)
    adata = sc.datasets.pbmc68k_reduced()
    source = "scanpy.datasets.pbmc68k_reduced()"
    labels = _obs_column(adata, label_key, source, what="cell-type label")
    split = stratified_split(labels.to_numpy(), query_fraction=query_fraction, seed=seed)
    _set_column(adata.obs, OBS_CELL_TYPE, labels.to_numpy(), source=source)
    _set_column(adata.obs, OBS_SPLIT, split, source=source)
    _set_column(adata.obs, OBS_BATCH, split, source=source)
    _gene_columns(adata, symbols=adata.var_names)
    _set_uns(adata, x_kind="scaled", reader=reader)
    adata.uns[UNS]["split"] = {"method": "stratified_split", "label_key": label_key,
                               "query_fraction": float(query_fraction), "seed": int(seed)}
    return adata


#: where a user dataset's keys live in the workflow config (messages name these, not ``keys.*``)
USER_CONFIG_KEY = "evaluation.user_datasets.{dataset}"


def read_user_h5ad(files: Mapping[str, os.PathLike], *, keys: Mapping, x_kind: str, task: str,
                   query_fraction: float | None = None, seed: int = 0, dataset: str | None = None) -> "ad.AnnData":
    """A user's own h5ad (config ``evaluation.user_datasets``), read into the standard schema.

    Parameters
    ----------
    files
        ``h5ad``: the user's file.
    keys
        ``label_key`` (required), ``batch_key`` (required for integration; for annotation None
        means batch = split), ``split_key`` (values ``reference`` / ``query`` / ``train`` /
        ``test``; required for annotation unless ``query_fraction`` asks for a split).
    x_kind
        What X holds (``counts``: checked to be integers and also stored in layer ``counts``;
        ``log1p_norm``; ``scaled``: needs ``.raw`` with log-normalised values; ``normalized``:
        TPM / FPKM / CPM, non-negative, log1p-normalised per cell where used, no counts).
    task
        ``annotation`` or ``integration``.
    query_fraction, seed
        Annotation without ``split_key``: a :func:`stratified_split` by label.
    dataset
        The dataset's name in the config, for messages that name the config key to set
        (``evaluation.user_datasets.<dataset>.batch_key``).
    """
    reader = "user_h5ad"
    path = _file(files, "h5ad", reader)
    where = USER_CONFIG_KEY.format(dataset=dataset or "<name>")
    if x_kind not in X_KINDS:
        raise InputError(f"{path}: {where}.x_kind is {x_kind!r}; expected one of {X_KINDS}")
    keys = dict(keys or {})
    for name, required in (("label_key", True), ("batch_key", task == "integration")):
        if required and not keys.get(name):
            what = "cell-type labels" if name == "label_key" else "each cell's batch, which integration corrects for"
            raise InputError(f"{path}: the {task} task needs {where}.{name} (the obs column with {what}) in the "
                             f"config; it is not set")
    label_key, batch_key, split_key = keys["label_key"], keys.get("batch_key"), keys.get("split_key")
    adata = read_h5ad_checked(path)
    check_size(adata, path)
    labels = _obs_column(adata, label_key, path, what="cell-type label")
    if split_key:
        split = _obs_column(adata, split_key, path, what="split").astype(str).to_numpy()
    elif task == "annotation":
        if query_fraction is None:
            raise InputError(f"{path}: the annotation task needs {where}.split_key (an obs column with reference / "
                             "query values) in the config; it is not set")
        split = stratified_split(labels.to_numpy(), query_fraction=query_fraction, seed=seed)
    else:
        split = None
    check_finite(adata.X, path)
    if x_kind == "counts":
        _check_counts(adata.X, path, what="X (x_kind 'counts')")
        adata.layers[LAYER_COUNTS] = adata.X.copy()
    elif x_kind == "log1p_norm":
        _check_log_normalized(adata.X, path)
    elif x_kind == "normalized":
        check_normalized(adata.X, path)
    elif x_kind == "scaled" and adata.raw is None:
        raise InputError(f"{path}: x_kind 'scaled' needs .raw with the log-normalised values; .raw is missing")
    _set_column(adata.obs, OBS_CELL_TYPE, labels.to_numpy(), source=path)
    if split is not None:
        _set_column(adata.obs, OBS_SPLIT, split, source=path)
    batch = _obs_column(adata, batch_key, path, what="batch").to_numpy() if batch_key else split
    if batch is not None:
        _set_column(adata.obs, OBS_BATCH, batch, source=path)
    if VAR_GENE_NAME not in adata.var:
        _gene_columns(adata, symbols=adata.var_names)
    _check_unique_obs(adata, path)
    _set_uns(adata, x_kind=x_kind, reader=reader)
    return adata


def read_sim_integration(files: Mapping[str, os.PathLike], *, keys: Mapping, **options) -> "ad.AnnData":
    """The simulated integration demo: :func:`cellmamba.datasets.simulate.simulate_integration`
    with the registry's ``options`` (n_cells, n_batches, seed, effect sizes). No files."""
    from .simulate import simulate_integration

    if files:
        raise InputError(f"reader 'sim_integration': takes no files; got {sorted(files)}")
    adata = simulate_integration(**options)
    for name, standard in (("label_key", OBS_CELL_TYPE), ("batch_key", OBS_BATCH)):
        if (keys or {}).get(name) not in (None, standard):
            raise InputError(f"reader 'sim_integration': keys.{name} is {keys[name]!r}; the simulator writes "
                             f"{standard!r}")
    return adata


def read_sim_perturbation(files: Mapping[str, os.PathLike], *, keys: Mapping, **options) -> "ad.AnnData":
    """The simulated perturbation demo (:func:`cellmamba.datasets.simulate_perturbation.simulate_perturbation`
    with the registry's ``options``), in GEARS' Norman layout, standardised like :func:`read_norman`."""
    from .simulate_perturbation import simulate_perturbation

    if files:
        raise InputError(f"reader 'sim_perturbation': takes no files; got {sorted(files)}")
    return _norman_standard(simulate_perturbation(**options), "simulated perturbation data", keys=keys,
                            reader="sim_perturbation", simulated=True)


def read_sim_multiome(files: Mapping[str, os.PathLike], *, keys: Mapping, **options) -> "ad.AnnData":
    """The simulated paired RNA + ATAC demo (:func:`cellmamba.datasets.simulate_multiome.simulate_multiome`
    with the registry's ``options``; ``files["positions"]``: the gene position table), in the
    BMMC multiome layout, standardised like :func:`read_bmmc`."""
    from .simulate_multiome import simulate_multiome

    positions = _file(files, "positions", "sim_multiome")
    return _bmmc_standard(simulate_multiome(positions=positions, **options), "simulated multiome data", keys=keys,
                          reader="sim_multiome", simulated=True)


# --------------------------------------------------------------------------- dispatch
READERS: dict[str, Callable] = {
    "pbmc10k": read_pbmc10k,
    "annotation_pair": read_annotation_pair,
    "norman": read_norman,
    "bmmc": read_bmmc,
    "pbmc68k_reduced": read_pbmc68k_reduced,
    "user_h5ad": read_user_h5ad,
    "sim_integration": read_sim_integration,
    "sim_perturbation": read_sim_perturbation,
    "sim_multiome": read_sim_multiome,
    "hsmm": read_hsmm,
}


def read_dataset(reader: str, files: Mapping[str, os.PathLike], *, task: str, keys: Mapping | None = None,
                 x_kind: str | None = None, options: Mapping | None = None,
                 dataset: str | None = None) -> "ad.AnnData":
    """Read a dataset with the named reader and check the standard schema of ``task``.

    Parameters
    ----------
    reader
        A key of :data:`READERS` (the registry's ``reader``).
    files
        Logical file name -> local path (empty for the demo readers).
    task
        ``annotation`` / ``integration`` / ``perturbation`` / ``multiomics`` / ``trajectory``.
    keys
        Source column names (registry ``keys``).
    x_kind
        The registry's ``x_kind``: must equal what the reader reports (for ``user_h5ad`` it
        is the user's statement, passed to the reader).
    options
        Reader keyword options (registry ``options``).
    dataset
        The dataset's name (``user_h5ad``: messages name its config keys).

    Returns
    -------
    AnnData in the standard schema, ``uns["cellmamba"]`` with ``x_kind``, ``reader``,
    ``simulated``, ``task``.
    """
    if reader not in READERS:
        raise InputError(f"reader {reader!r} is unknown; expected one of {sorted(READERS)}")
    kwargs = dict(options or {})
    if reader == "user_h5ad":
        kwargs.update(x_kind=x_kind, task=task, dataset=dataset)
    adata = READERS[reader](dict(files), keys=dict(keys or {}), **kwargs)
    # the files read, so that every error below names them
    source = f"{', '.join(str(p) for p in dict(files).values())} (reader {reader!r})" if files else f"reader {reader!r}"
    validate_standard(adata, task, source=source)
    got = adata.uns[UNS][UNS_X_KIND]
    if x_kind is not None and got != x_kind:
        raise InputError(f"{source}: produced x_kind {got!r} but the registry entry says {x_kind!r}; fix x_kind in "
                         "config/datasets.yaml")
    _check_unique_obs(adata, source)
    adata.uns[UNS]["task"] = task
    return adata

"""The standard dataset schema every reader produces (DESIGN.md, "Data flow and formats").

obs: ``cell_type``, ``batch``, ``split`` (``reference`` / ``query`` / ``train`` / ``test``),
``condition`` (perturbation; ``ctrl`` for controls), ``modality``, ``pseudotime`` and ``time``
(trajectory: the published pseudotime, NaN off the trajectories; the measured time, where known); var: ``gene_name`` (symbol)
and, where known, ``gene_id`` (Ensembl); layer ``counts`` only where the publication provides
counts; ``uns["cellmamba"]["x_kind"]`` says what X holds. Counts are never faked.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..keys import (LAYER_COUNTS, OBS_BATCH, OBS_CELL_TYPE, OBS_CONDITION, OBS_MODALITY, OBS_PSEUDOTIME, OBS_SPLIT,
                    OBS_TIME, UNS, UNS_SIMULATED, UNS_X_KIND, VAR_GENE_ID, VAR_GENE_NAME)

__all__ = ["X_KINDS", "SPLITS", "VAR_GENE_NAME", "VAR_GENE_ID", "UNS_SIMULATED",
           "x_kind", "log_normalized", "counts_matrix", "validate_standard", "count_nonfinite",
           "check_finite", "check_log1p_norm", "check_size", "check_normalized", "MAX_LOG_VALUE", "MIN_CELLS",
           "NORMALIZED_TARGET_SUM"]

#: what X may hold: raw counts; log1p(counts / total * 1e4); scaled (z-scored) log-normalised
#: values with the log-normalised matrix in ``.raw``; normalized: per-cell scaled, not logged, not
#: counts (TPM / FPKM / CPM, e.g. Smart-seq2), turned into log1p(x / total * 1e4) per cell;
#: other continuous values the readers keep as published (Norman's log1p at the median target)
X_KINDS = ("counts", "log1p_norm", "scaled", "normalized", "other")
#: library size a normalized (TPM / FPKM / CPM) cell is rescaled to before log1p, as counts are
NORMALIZED_TARGET_SUM = 1e4
SPLITS = ("reference", "query", "train", "test")
#: fewest cells a dataset may have: annotation needs a reference and a query cell, integration a
#: cell and a neighbour; 0 or 1 cell is an empty or truncated file, not a split problem
MIN_CELLS = 2
#: largest X value accepted as log-normalised (log1p(1e4 x 1e4) ~ 18.4; counts are far larger)
MAX_LOG_VALUE = 50.0
#: required obs columns per task
_TASK_OBS = {
    "annotation": (OBS_CELL_TYPE, OBS_BATCH, OBS_SPLIT),
    "integration": (OBS_CELL_TYPE, OBS_BATCH),
    "perturbation": (OBS_CONDITION,),
    "multiomics": (OBS_CELL_TYPE, OBS_MODALITY),
    "trajectory": (OBS_PSEUDOTIME,),
}


def x_kind(adata, *, source: str = "dataset") -> str:
    """``adata.uns["cellmamba"]["x_kind"]``, checked against :data:`X_KINDS`."""
    kind = adata.uns.get(UNS, {}).get(UNS_X_KIND)
    if kind not in X_KINDS:
        raise InputError(f"{source}: uns['{UNS}']['{UNS_X_KIND}'] is {kind!r}; expected one of {X_KINDS}")
    return kind


def _is_integer_valued(X) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    return bool(np.all(data >= 0) and np.all(np.mod(data, 1) == 0))


def counts_matrix(adata, *, source: str = "dataset"):
    """Raw counts: ``layers["counts"]`` or X when x_kind is ``counts``; InputError otherwise.

    Only callers that truly need counts (scVI, seurat_v3 HVGs) use this; a dataset published
    without counts is reported as such, never reconstructed.
    """
    if LAYER_COUNTS in adata.layers:
        X = adata.layers[LAYER_COUNTS]
    elif x_kind(adata, source=source) == "counts":
        X = adata.X
    else:
        raise InputError(f"{source}: no raw counts (layer '{LAYER_COUNTS}' missing and x_kind is "
                         f"{x_kind(adata, source=source)!r}); this method needs counts")
    if not _is_integer_valued(X):
        raise InputError(f"{source}: the counts matrix holds non-integer or negative values")
    return X


def log_normalized(adata, *, source: str = "dataset"):
    """log1p(counts / total x 1e4) of every cell, as float32 CSR (n_cells, n_vars).

    From counts (layer or X) when there are any; X itself when x_kind is ``log1p_norm``; ``.raw``
    (which must have the same genes) when X is ``scaled``; for ``normalized`` (TPM / FPKM / CPM)
    each cell rescaled to sum :data:`NORMALIZED_TARGET_SUM` over its genes, then log1p: the
    counts path after normalize_total (what is lost: the counts themselves, so methods that need
    them refuse such data, :func:`counts_matrix`). ``other`` raises.
    """
    kind = x_kind(adata, source=source)
    if LAYER_COUNTS in adata.layers or kind in ("counts", "normalized"):
        X = adata.X if kind == "normalized" and LAYER_COUNTS not in adata.layers else counts_matrix(adata, source=source)
        X = sp.csr_matrix(X, dtype=np.float32)
        total = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(NORMALIZED_TARGET_SUM, total, out=np.zeros_like(total), where=total > 0)
        X = sp.diags(scale.astype(np.float32)) @ X
        X.data = np.log1p(X.data)
        return X.tocsr()
    if kind == "log1p_norm":
        return sp.csr_matrix(adata.X, dtype=np.float32)
    if kind == "scaled":
        if adata.raw is None:
            raise InputError(f"{source}: x_kind is 'scaled' but .raw (log-normalised values) is missing")
        raw = adata.raw.to_adata()
        if list(raw.var_names) != list(adata.var_names):
            raw = raw[:, adata.var_names]
        return sp.csr_matrix(raw.X, dtype=np.float32)
    raise InputError(f"{source}: x_kind {kind!r} cannot be turned into log-normalised expression")


def _stored_values(X) -> np.ndarray:
    """The stored values of X as a flat array (sparse: its data; dense: a view where possible)."""
    return X.data if sp.issparse(X) else np.asarray(X).ravel()


def count_nonfinite(X, *, block: int = 1 << 24) -> int:
    """Number of NaN / inf values stored in X (dense or sparse), counted in blocks (bounded memory)."""
    data = _stored_values(X)
    if not np.issubdtype(data.dtype, np.floating):
        return 0
    return int(sum(int((~np.isfinite(data[i:i + block])).sum()) for i in range(0, data.size, block)))


def check_finite(X, source, *, what: str = "X") -> None:
    """InputError naming ``source`` and how many values are NaN or inf; nothing downstream
    (HVGs, PCA, sklearn's baselines, the tokenizers) is defined on them."""
    n_bad = count_nonfinite(X)
    if n_bad:
        n_total = _stored_values(X).size
        raise InputError(f"{source}: {what} holds {n_bad} non-finite values (NaN or inf) of {n_total} stored; "
                         "expected finite expression values (replace them, or drop the cells / genes "
                         "that hold them, before preparing the dataset)")


def check_size(adata, source) -> None:
    """InputError naming ``source`` and its number of cells (genes) when it has fewer than
    :data:`MIN_CELLS` cells or no genes."""
    if adata.n_obs < MIN_CELLS:
        raise InputError(f"{source}: has {adata.n_obs} cell{'s' if adata.n_obs != 1 else ''}; a dataset needs at "
                         f"least {MIN_CELLS} (is the file empty, truncated or filtered to nothing?)")
    if adata.n_vars == 0:
        raise InputError(f"{source}: has {adata.n_obs} cells but no genes (var is empty)")


def check_log1p_norm(X, source) -> None:
    """InputError unless X looks like log1p(counts / total x 1e4): values in [0, MAX_LOG_VALUE]
    and not all integers.

    Counts declared ``log1p_norm`` are caught by the integer rule: every stored value a whole
    number with the largest >= 2. A log1p value is a whole number only by accident
    (log1p(x) = k needs x = e^k - 1), so real log-normalised data never pass it; 0/1-only data
    are left alone (binary, not evidence of counts)."""
    data = _stored_values(X)
    if data.size == 0:
        return
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if lo < 0 or hi > MAX_LOG_VALUE:
        hint = " (negative values: X may be scaled, then set x_kind scaled with .raw)" if lo < 0 else \
            " (values this large look like counts or TPM: set x_kind counts or normalized)"
        raise InputError(f"{source}: X ranges over [{lo:g}, {hi:g}]; expected log-normalised values in "
                         f"[0, {MAX_LOG_VALUE:g}] (x_kind 'log1p_norm'){hint}")
    if hi >= 2 and bool(np.all(np.mod(data, 1) == 0)):
        raise InputError(f"{source}: X is declared x_kind 'log1p_norm' but every value is a whole number "
                         f"(largest {hi:g}): the data look like raw counts; set x_kind: counts "
                         "(or store log1p(counts / total x 1e4) in X)")


def check_normalized(X, source) -> None:
    """InputError unless X can be per-cell scaled values (TPM / FPKM / CPM): no negative values."""
    data = _stored_values(X)
    if data.size and float(np.nanmin(data)) < 0:
        raise InputError(f"{source}: X holds negative values (min {float(np.nanmin(data)):g}); x_kind 'normalized' "
                         "expects non-negative per-cell scaled values such as TPM, FPKM or CPM")


def _check_values(adata, kind: str, source: str) -> None:
    check_finite(adata.X, source)
    if kind == "log1p_norm":
        check_log1p_norm(adata.X, source)
    elif kind == "normalized":
        check_normalized(adata.X, source)
    if LAYER_COUNTS in adata.layers:
        check_finite(adata.layers[LAYER_COUNTS], source, what=f"layer '{LAYER_COUNTS}'")
    if kind == "scaled" and adata.raw is not None:
        check_finite(adata.raw.X, source, what=".raw.X")


def validate_standard(adata, task: str, *, source: str = "dataset") -> None:
    """Check the standard schema for ``task``; raise InputError naming the missing key or the
    bad values (non-finite values anywhere in X / layer counts / .raw)."""
    if task not in _TASK_OBS:
        raise InputError(f"{source}: unknown task {task!r}; expected one of {sorted(_TASK_OBS)}")
    kind = x_kind(adata, source=source)
    check_size(adata, source)
    _check_values(adata, kind, source)
    for key in _TASK_OBS[task]:
        if key not in adata.obs:
            raise InputError(f"{source}: obs column '{key}' is required for the {task} task; "
                             f"found {list(adata.obs.columns)}")
    if VAR_GENE_NAME not in adata.var:
        raise InputError(f"{source}: var column '{VAR_GENE_NAME}' (gene symbols) is missing")
    if OBS_SPLIT in adata.obs:
        bad = sorted(set(adata.obs[OBS_SPLIT].astype(str)) - set(SPLITS))
        if bad:
            raise InputError(f"{source}: obs['{OBS_SPLIT}'] has values {bad}; expected a subset of {SPLITS}")
    if task == "trajectory":
        _check_trajectory_columns(adata, source)
    if task == "annotation":
        splits = set(adata.obs[OBS_SPLIT].astype(str))
        if not {"reference", "query"} <= splits:
            raise InputError(f"{source}: annotation needs obs['{OBS_SPLIT}'] with 'reference' and 'query' "
                             f"cells; found {sorted(splits)}")


def _check_trajectory_columns(adata, source) -> None:
    """obs ``pseudotime`` numeric with at least 2 finite values (NaN: a cell on no trajectory; inf is
    an error); obs ``time``, where present, numeric and finite."""
    import pandas as pd

    for key, nan_ok in ((OBS_PSEUDOTIME, True), (OBS_TIME, False)):
        if key not in adata.obs:
            continue
        col = adata.obs[key]
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise InputError(f"{source}: obs['{key}'] has dtype {col.dtype}; expected numbers")
        values = col.to_numpy(np.float64)
        if np.isinf(values).any() or (not nan_ok and np.isnan(values).any()):
            bad = int((np.isinf(values) | (np.isnan(values) & (not nan_ok))).sum())
            raise InputError(f"{source}: obs['{key}'] holds {bad} " + ("infinite" if nan_ok else "missing or infinite")
                             + " values; expected " + ("finite values or NaN (on no trajectory)" if nan_ok
                                                      else "a finite time for every cell"))
    n_finite = int(np.isfinite(adata.obs[OBS_PSEUDOTIME].to_numpy(np.float64)).sum())
    if n_finite < 2:
        raise InputError(f"{source}: obs['{OBS_PSEUDOTIME}'] has {n_finite} finite values; a trajectory needs at "
                         "least 2 cells with a pseudotime")

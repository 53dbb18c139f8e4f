"""The metric row format every metric module writes and :mod:`.tables` reads.

A run's metrics are a LONG frame, one row per metric: columns ``task``, ``dataset``,
``method``, ``seed``, ``metric``, ``value``, any number of flag columns that identify the row
of the table (``variant`` e.g. ``hvg1200`` / ``all_genes``, ``simulated``, ``n_params`` ...),
and ``note`` (why a value is NaN).

Each metric module declares its metrics in one place, ``METRICS``: metric name -> direction, one of
:data:`DIRECTIONS`: ``"higher"`` or ``"lower"`` (which value is better) or ``"unranked"`` (a
descriptive count, never the best); a name ending in ``*`` declares a family (``mse*``: ``mse``,
``mse_de20``, ``mse_<subgroup>`` ...).
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import pandas as pd

from ..errors import InputError
from ..io import atomic_path

__all__ = ["CORE_COLUMNS", "NOTE", "DIRECTIONS", "metrics_frame", "write_csv", "read_metrics"]

CORE_COLUMNS = ("task", "dataset", "method", "seed", "metric", "value")
NOTE = "note"

#: the directions a metric module declares for its metrics (see the module doc)
DIRECTIONS = ("higher", "lower", "unranked")


def metrics_frame(scores: Mapping[str, float], *, task: str, dataset: str, method: str, seed: int,
                  extra: Mapping[str, object] | None = None) -> pd.DataFrame:
    """One run's metrics as a long frame.

    Parameters
    ----------
    scores
        Metric name -> value; a :class:`~cellmamba.metrics.Scores` also contributes its notes.
    task, dataset, method, seed
        Identify the run.
    extra
        Flag columns copied onto every row (e.g. ``{"variant": "hvg1200", "simulated": False}``).

    Returns
    -------
    pandas.DataFrame
        Columns ``task, dataset, method, seed, metric, value, <extra...>, note``.
    """
    extra = dict(extra or {})
    clash = set(extra) & set(CORE_COLUMNS + (NOTE,))
    if clash:
        raise InputError(f"extra: columns {sorted(clash)} are reserved")
    notes = getattr(scores, "notes", {})
    rows = [{"task": task, "dataset": dataset, "method": method, "seed": int(seed), "metric": name,
             "value": float(value), **extra, NOTE: notes.get(name, "")} for name, value in scores.items()]
    return pd.DataFrame(rows, columns=[*CORE_COLUMNS, *extra, NOTE])


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, *, index: bool = False) -> None:
    """Write ``frame`` as CSV atomically (with its index only if ``index``)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index)


def read_metrics(paths: Iterable[str | os.PathLike]) -> list[pd.DataFrame]:
    """Read long metric CSVs, checking each has the core columns."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path, keep_default_na=True)
        missing = [c for c in CORE_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(f"{path}: metric file lacks columns {missing}; expected {list(CORE_COLUMNS)}")
        frames.append(frame)
    return frames

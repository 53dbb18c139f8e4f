"""Shared pieces of the metric modules: the result type and input checks."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["Scores", "as_labels", "as_matrix", "quiet_stdout"]


class Scores(dict):
    """``dict[str, float]`` of metric name -> value, plus ``notes``: metric -> why it is NaN.

    A metric that could not be computed is present with value NaN and a note, never missing,
    so every run of a task yields the same metric names.
    """

    def __init__(self, *args, notes: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.notes: dict[str, str] = dict(notes or {})

    def skip(self, metric: str, reason: str) -> None:
        """Record ``metric`` as NaN because of ``reason``."""
        self[metric] = float("nan")
        self.notes[metric] = reason


def as_labels(values, *, name: str) -> np.ndarray:
    """1-D object array of string labels; InputError naming ``name`` on missing values."""
    series = pd.Series(np.asarray(values, dtype=object).ravel() if not isinstance(values, pd.Series) else values)
    missing = series.isna() | (series.astype(str).str.strip() == "")
    if missing.any():
        raise InputError(f"{name}: {int(missing.sum())} of {len(series)} labels are missing or empty "
                         f"(first at position {int(np.flatnonzero(missing.to_numpy())[0])})")
    return series.astype(str).to_numpy(dtype=object)


def as_matrix(values, *, name: str, ndim: int = 2) -> np.ndarray:
    """Finite float64 array of ``ndim`` dimensions; InputError naming ``name`` otherwise."""
    arr = np.asarray(values.toarray() if hasattr(values, "toarray") else values, dtype=np.float64)
    if arr.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: holds {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf)")
    return arr


@contextlib.contextmanager
def quiet_stdout(logger: logging.Logger) -> Iterator[None]:
    """Capture what a library prints (scib prints progress) and send it to ``logger`` at DEBUG."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        text = buf.getvalue().strip()
        if text:
            logger.debug("%s", text)

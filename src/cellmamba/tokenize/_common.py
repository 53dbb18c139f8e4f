"""Pieces shared by the three tokenizers: the output batch and the checked CSR inputs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from . import _kernels as K

__all__ = ["TokenBatch", "CsrChunk", "csr_chunk", "check_counts"]


@dataclass
class TokenBatch:
    """Tokens of a batch of cells in CSR form.

    ``offsets``: int64 (n_cells + 1,); ``tokens``: uint32 (n_tokens,); ``values``:
    (n_tokens,) uint8 (binned) / float32 (patch) / None (rank); ``stats``: counters
    (e.g. entries dropped) for the manifest.
    """

    offsets: np.ndarray
    tokens: np.ndarray
    values: np.ndarray | None
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def cell(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], (self.values[a:b] if self.values is not None else None)


@dataclass
class CsrChunk:
    """A chunk of cells ready for a kernel (see _kernels' module docstring for the arrays)."""

    indptr: np.ndarray   # int64 (n + 1,), starts at 0
    genes: np.ndarray    # int32/int64 (nnz,), vocabulary gene index, -1 = outside the vocabulary
    counts: np.ndarray   # float32 (nnz,)
    totals: np.ndarray   # float64 (n,), total counts of each cell over all its genes

    @property
    def n_cells(self) -> int:
        return self.indptr.shape[0] - 1


def check_counts(data: np.ndarray, indptr: np.ndarray, indices: np.ndarray, *, source: str,
                 first_row: int = 0, gene_names=None, integers: bool = True) -> None:
    """Raise InputError naming the row, column and value if ``data`` holds anything but
    finite non-negative integers (raw counts are required), or, with ``integers=False``,
    anything but finite non-negative values."""
    bad = int(K.first_bad_count(data) if integers else K.first_bad_value(data))
    if bad < 0:
        return
    row = first_row + int(np.searchsorted(indptr, bad, side="right")) - 1
    col = int(indices[bad])
    gene = f" (gene {gene_names[col]})" if gene_names is not None else ""
    need = "raw counts (non-negative integers)" if integers else "finite non-negative values"
    raise InputError(f"{source}: X holds {float(data[bad])!r} at row {row}, column {col}{gene}; {need} are required")


def csr_chunk(X, *, source: str = "X", totals: np.ndarray | None = None, counts: bool = True) -> CsrChunk:
    """Checked kernel inputs from a scipy CSR matrix (n_cells, n_genes) of raw counts whose
    columns are the vocabulary genes (``counts=False``: any finite non-negative values, e.g.
    normalised expression of a dataset published without counts)."""
    if not sp.issparse(X):
        X = sp.csr_matrix(np.asarray(X))
    X = X.tocsr()
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    indptr = X.indptr.astype(np.int64, copy=False)
    values = X.data.astype(np.float32, copy=False)
    if counts and X.data.dtype != np.float32 and not np.array_equal(values, X.data):
        raise InputError(f"{source}: values do not fit float32 exactly; raw counts are required")
    check_counts(values, indptr, X.indices, source=source, integers=counts)
    if totals is None:
        totals = K.row_sums(indptr, values)
    totals = np.asarray(totals, dtype=np.float64)
    if totals.shape != (X.shape[0],):
        raise InputError(f"{source}: totals has shape {totals.shape}, expected ({X.shape[0]},)")
    return CsrChunk(indptr, X.indices, values, totals)

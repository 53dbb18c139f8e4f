"""Binned tokenizer against a naive per-cell reference (np.quantile + np.digitize per dense row)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellmamba.errors import InputError
from cellmamba.tokenize import BinnedConfig, tokenize_binned
from cellmamba.vocab import CLS_ID, N_SPECIAL


def random_counts(seed: int, n_cells: int = 40, n_genes: int = 80, density: float = 0.4):
    """Heavy-tailed small integer counts (most values tie with a bin edge), an all-zero cell,
    a single-gene cell and a fully expressed (long) cell."""
    rng = np.random.default_rng(seed)
    dense = rng.geometric(0.5, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    dense[2] = 0
    dense[4] = 0
    dense[4, 17] = 3
    dense[6] = rng.integers(1, 4, n_genes)
    return dense.astype(np.float32)


def reference_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """scGPT's edges; bin = (a + b + 1) // 2, a = #edges < x, b = #edges <= x."""
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    a = np.digitize(values, edges, right=True)
    b = np.digitize(values, edges)
    return (a + b + 1) // 2


def binned_reference(row: np.ndarray, n_bins: int, max_len: int):
    genes = np.flatnonzero(row)
    if genes.size == 0:
        return [CLS_ID], [0]
    bins = dict(zip(genes.tolist(), reference_bins(row[genes], n_bins).tolist()))
    keep = genes.tolist()
    if len(keep) > max_len - 1:  # "top": highest values, ties by lower gene index
        keep = sorted(sorted(keep, key=lambda j: (-row[j], j))[:max_len - 1])
    return [CLS_ID] + [N_SPECIAL + j for j in keep], [0] + [bins[j] for j in keep]


@pytest.mark.parametrize("n_bins, max_len", [(51, 1200), (5, 1200), (11, 9), (3, 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_binned_matches_reference(seed, n_bins, max_len):
    dense = random_counts(seed)
    batch = tokenize_binned(sp.csr_matrix(dense), BinnedConfig(n_bins=n_bins, max_len=max_len))
    for i, row in enumerate(dense):
        tokens, values = batch.cell(i)
        ref_t, ref_v = binned_reference(row, n_bins, max_len)
        assert tokens.tolist() == ref_t, f"cell {i}"
        assert values.dtype == np.uint8 and values.tolist() == ref_v, f"cell {i}"
        assert values[1:].min(initial=1) >= 1 and values.max(initial=0) <= n_bins - 1
    assert batch.cell(2)[0].tolist() == [CLS_ID]  # all-zero cell
    n_long = sum(np.count_nonzero(r) > max_len - 1 for r in dense)
    assert batch.stats["n_cells_shortened"] == n_long


def test_binned_tie_rule_is_middle_of_scgpt_range():
    # 9 ones and one 5: edges of 5 bins (4 edges at quantiles 0, 1/3, 2/3, 1) = [1, 1, 1, 5]
    row = np.array([[1] * 9 + [5]], dtype=np.float32)
    _, values = tokenize_binned(sp.csr_matrix(row), BinnedConfig(n_bins=5)).cell(0)
    # a count of 1 ties edges 0..2: scGPT draws from {1, 2, 3}; we take the middle, 2
    assert values.tolist() == [0] + [2] * 9 + [4]


def test_binned_raw_equals_log1p_normalised():
    """Per-cell quantile bins are invariant to a per-cell increasing transform (module doc)."""
    dense = random_counts(3)
    batch = tokenize_binned(sp.csr_matrix(dense), BinnedConfig())
    for i, row in enumerate(dense):
        genes = np.flatnonzero(row)
        if genes.size:
            norm = np.log1p(row[genes].astype(np.float64) / row.sum() * 1e4)
            assert batch.cell(i)[1][1:].tolist() == reference_bins(norm, 51).tolist()


def test_binned_sample_long_cells():
    dense = random_counts(4, n_cells=12, n_genes=200, density=0.6)
    full = tokenize_binned(sp.csr_matrix(dense), BinnedConfig(max_len=100_000))
    cfg = BinnedConfig(max_len=21, long_cells="sample", seed=7)
    a = tokenize_binned(sp.csr_matrix(dense), cfg, first_cell=1000)
    b = tokenize_binned(sp.csr_matrix(dense[5:]), cfg, first_cell=1005)  # other chunking, same cells
    c = tokenize_binned(sp.csr_matrix(dense), BinnedConfig(max_len=21, long_cells="sample", seed=8), first_cell=1000)
    differs = 0
    for i, row in enumerate(dense):
        tok, val = a.cell(i)
        assert tok[0] == CLS_ID and len(tok) == min(21, np.count_nonzero(row) + 1)
        assert np.all(np.diff(tok[1:].astype(np.int64)) > 0)  # ascending gene order
        ftok, fval = full.cell(i)
        bins_of = dict(zip(ftok[1:].tolist(), fval[1:].tolist()))  # bins over ALL expressed genes
        assert all(bins_of[t] == v for t, v in zip(tok[1:].tolist(), val[1:].tolist()))
        if i >= 5:
            assert b.cell(i - 5)[0].tolist() == tok.tolist()
        differs += c.cell(i)[0].tolist() != tok.tolist()
    assert differs > 0
    top = tokenize_binned(sp.csr_matrix(dense), BinnedConfig(max_len=21))
    assert any(top.cell(i)[0].tolist() != a.cell(i)[0].tolist() for i in range(len(dense)))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_bins": 2}, "n_bins"), ({"n_bins": 300}, "n_bins"), ({"max_len": 1}, "max_len"),
    ({"long_cells": "random"}, "long_cells"), ({"seed": -1}, "seed"),
])
def test_binned_config_rejects(kwargs, match):
    with pytest.raises(InputError, match=match):
        BinnedConfig(**kwargs)


def test_binned_rejects_negative_counts():
    X = sp.csr_matrix(np.array([[0, 2.0], [-1.0, 0]], dtype=np.float32))
    with pytest.raises(InputError, match=r"-1\.0 at row 1, column 0"):
        tokenize_binned(X)

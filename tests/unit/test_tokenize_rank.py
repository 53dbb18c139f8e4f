"""Rank tokenizer against a naive per-cell reference (dense rows, Python sorting)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cellmamba.errors import InputError
from cellmamba.tokenize import RankConfig, gene_medians, tokenize_rank
from cellmamba.vocab import N_SPECIAL


def random_counts(seed: int, n_cells: int = 40, n_genes: int = 60, density: float = 0.3, high: int = 4):
    """Small integer counts (many ties), one all-zero cell, one dense (long) cell."""
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, high + 1, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    dense[3] = 0                       # an all-zero cell
    dense[5] = rng.integers(1, 3, n_genes)  # every gene expressed: longer than small max_len
    return dense.astype(np.float32)


def rank_reference(row: np.ndarray, median: np.ndarray, target_sum: float, max_len: int) -> list[int]:
    """Score = float32(count * (target_sum / total) * (1 / median)); descending, ties by gene index."""
    total = float(row.sum())
    scored = []
    for j in range(row.shape[0]):
        if row[j] > 0 and not np.isnan(median[j]):
            score = float(np.float32(float(row[j]) * (target_sum / total) * (1.0 / median[j])))
            scored.append((-score, j))
    scored.sort()
    return [N_SPECIAL + j for _, j in scored[:max_len]]


@pytest.mark.parametrize("max_len", [1, 7, 2048])
@pytest.mark.parametrize("seed", [0, 1])
def test_rank_matches_reference(seed, max_len):
    dense = random_counts(seed)
    rng = np.random.default_rng(100 + seed)
    # few distinct medians -> many equal scores, i.e. the tie rule is exercised
    median = rng.choice([0.5, 1.0, 2.0], size=dense.shape[1]).astype(np.float64)
    median[[2, 11, 30]] = np.nan  # never detected in the corpus
    batch = tokenize_rank(sp.csr_matrix(dense), median, RankConfig(max_len=max_len, target_sum=1e4))
    n_nan = 0
    for i, row in enumerate(dense):
        tokens, values = batch.cell(i)
        assert values is None
        assert tokens.dtype == np.uint32
        assert tokens.tolist() == rank_reference(row, median, 1e4, max_len), f"cell {i}"
        n_nan += int((row[[2, 11, 30]] > 0).sum())
    assert batch.stats["n_nonzero_no_median"] == n_nan > 0
    assert len(batch.cell(3)[0]) == 0  # all-zero cell: no tokens
    assert len(batch.cell(5)[0]) == min(max_len, dense.shape[1] - 3)


def test_rank_ties_go_to_lower_gene_index():
    row = np.array([[2, 0, 2, 2, 1]], dtype=np.float32)
    batch = tokenize_rank(sp.csr_matrix(row), np.ones(5), RankConfig(max_len=3))
    assert batch.cell(0)[0].tolist() == [N_SPECIAL + 0, N_SPECIAL + 2, N_SPECIAL + 3]


def test_rank_median_changes_order():
    row = np.array([[10, 1]], dtype=np.float32)
    batch = tokenize_rank(sp.csr_matrix(row), np.array([100.0, 0.01]), RankConfig())
    assert batch.cell(0)[0].tolist() == [N_SPECIAL + 1, N_SPECIAL + 0]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_len": 0}, "max_len"), ({"max_len": 2.5}, "max_len"), ({"target_sum": 0}, "target_sum"),
])
def test_rank_config_rejects(kwargs, match):
    with pytest.raises(InputError, match=match):
        RankConfig(**kwargs)


def test_rank_rejects_non_integer_counts():
    X = sp.csr_matrix(np.array([[1.0, 0.5]], dtype=np.float32))
    with pytest.raises(InputError, match=r"0\.5 at row 0, column 1"):
        tokenize_rank(X, np.ones(2))


def test_gene_medians_rejects_zero_median():
    import pandas as pd
    stats = pd.DataFrame({"feature_id": ["ENSG1", "ENSG2"], "nonzero_median": [1.0, 0.0]})
    with pytest.raises(InputError, match="ENSG2"):
        gene_medians(stats, source="gs.tsv")

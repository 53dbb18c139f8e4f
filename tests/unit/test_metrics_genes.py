"""Gene-level metrics (cellmamba.metrics.genes), each against a case computed by hand."""
import numpy as np
import pytest

from cellmamba.errors import InputError
from cellmamba.metrics.genes import (coexpression_scores, comembership, cosine_scores, membership_matrix, pair_scores,
                                     pair_set_scores, rank_pairs, rank_spearman, reconstruction_order, sample_pairs,
                                     score_reconstruction, summarize_reconstruction, topk_overlap)


def test_auroc_auprc_of_four_pairs_by_hand():
    # ranked by score: pos (0.9), neg (0.8), pos (0.3), neg (0.1)
    # AUROC: positive-negative pairs ordered right: (0.9>0.8), (0.9>0.1), (0.3>0.1); wrong: (0.3<0.8) -> 3/4
    # AUPRC (average precision): recall 1/2 at precision 1/1, recall 2/2 at precision 2/3 -> (1 + 2/3) / 2
    got = pair_scores([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    assert got["auroc"] == pytest.approx(0.75)
    assert got["auprc"] == pytest.approx(5 / 6)
    assert (got["n_pairs"], got["n_positive"], got["positive_rate"]) == (4, 2, 0.5)
    one_class = pair_scores([0.1, 0.2], [False, False])
    assert np.isnan(one_class["auroc"]) and np.isnan(one_class["auprc"])
    with pytest.raises(InputError, match="not finite"):
        pair_scores([np.nan, 0.2], [True, False])


def test_comembership_of_a_tiny_gmt_by_hand(tmp_path):
    from cellmamba.train.pathways import read_gmt

    gmt = tmp_path / "tiny.gmt"
    gmt.write_text("S1\tdesc\tA\tB\tC\nS2\tdesc\tC\tD\nS3\tdesc\tE\tX\n")  # X is not an evaluated gene
    genes = ["A", "B", "C", "D", "E"]
    m = membership_matrix(genes, read_gmt(gmt))
    assert m.shape == (3, 5)
    assert m.toarray().astype(int).tolist() == [[1, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    co = comembership(m, block=2)  # blocks smaller than the matrix
    expected = {("A", "B"), ("A", "C"), ("B", "C"), ("C", "D")}
    for i in range(5):
        for j in range(i + 1, 5):
            assert co[i, j] == co[j, i] == ((genes[i], genes[j]) in expected), (genes[i], genes[j])
    assert co.diagonal().tolist() == [True] * 5  # every gene is in some set (E in S3 alone: no pair)


def test_strict_pairs_leave_out_what_the_loss_trained_on():
    # six pairs; the two the trained sets hold (the first two) score highest, one of them a held-out positive
    scores = np.array([0.95, 0.9, 0.2, 0.1, 0.5, 0.4])
    held_out = np.array([True, False, True, False, False, True])
    trained = np.array([True, True, False, False, False, False])
    got = pair_set_scores(scores, held_out, trained)
    assert got["all"]["n_pairs"] == 6 and got["strict"]["n_pairs"] == 4
    # all: positives 0.95, 0.2, 0.4 vs negatives 0.9, 0.1, 0.5: 0.95 beats 3, 0.2 and 0.4 beat 0.1: 5 of 9
    assert got["all"]["auroc"] == pytest.approx(5 / 9)
    # strict: pairs 2..5, positives 0.2, 0.4 vs negatives 0.1, 0.5: each beats 0.1 only: 2 of 4
    assert got["strict"]["auroc"] == pytest.approx(0.5)
    assert got["strict"]["n_positive"] == 2 and got["strict"]["positive_rate"] == pytest.approx(0.5)
    empty = pair_set_scores(scores[:2], held_out[:2], trained[:2])["strict"]
    assert empty["n_pairs"] == 0 and np.isnan(empty["auroc"])


def test_pair_sample_is_stratified_seeded_and_complete_under_the_cap():
    n = 30  # 435 pairs
    label = np.random.default_rng(0).random((n, n)) < 0.1
    label = label | label.T
    a, b = sample_pairs(n, lambda i, j: label[i, j].astype(int), max_pairs=None, seed=0)
    assert len(a) == n * (n - 1) // 2 and (a < b).all()
    positives = int(label[a, b].sum())
    a2, b2 = sample_pairs(n, lambda i, j: label[i, j].astype(int), max_pairs=100, seed=3)
    assert len(a2) == 100 and (a2 < b2).all() and len(set(zip(a2, b2))) == 100
    # proportional allocation: the sample keeps the positives' share, to rounding
    assert int(label[a2, b2].sum()) == round(positives * 100 / len(a))
    again = sample_pairs(n, lambda i, j: label[i, j].astype(int), max_pairs=100, seed=3)
    assert np.array_equal(again[0], a2) and np.array_equal(again[1], b2)
    other = sample_pairs(n, lambda i, j: label[i, j].astype(int), max_pairs=100, seed=4)
    assert not np.array_equal(other[0] * n + other[1], a2 * n + b2)


def test_cosine_scores_by_hand():
    emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    got = cosine_scores(emb, [0, 0, 0, 1], [1, 2, 3, 3])
    assert got == pytest.approx([1 / np.sqrt(2), 0.0, -1.0, -1 / np.sqrt(2)])


def test_coexpression_equals_numpy_corrcoef_and_skips_unmeasured_cells():
    rng = np.random.default_rng(1)
    X = rng.random((12, 4))
    X[:, 3] = X[:, 0] * 2 + 1  # r = 1 with gene 0
    a, b = np.array([0, 0, 1, 2, 0]), np.array([1, 2, 3, 3, 3])
    full = np.corrcoef(X.T)
    assert coexpression_scores(X, a, b, chunk=2) == pytest.approx(full[a, b])
    import scipy.sparse as sp

    assert coexpression_scores(sp.csr_matrix(X), a, b) == pytest.approx(full[a, b])
    # two datasets of 6 cells; dataset 1 did not measure gene 2: its pairs use dataset 0's cells only
    groups = np.repeat([0, 1], 6)
    measured = np.ones((4, 2), dtype=bool)
    measured[2, 1] = False
    got = coexpression_scores(X, a, b, groups=groups, measured=measured)
    first = np.corrcoef(X[:6].T)
    assert got[[0, 2, 4]] == pytest.approx(full[a, b][[0, 2, 4]])  # pairs without gene 2: every cell
    assert got[[1, 3]] == pytest.approx(first[a, b][[1, 3]])
    const = np.ones((5, 2))
    const[:, 1] = np.arange(5)
    assert np.isnan(coexpression_scores(const, [0], [1])[0])  # a constant gene has no correlation


def test_rank_reconstruction_metrics_on_five_genes_by_hand():
    genes = np.array([10, 11, 12, 13, 14])       # input ranking, highest first
    predicted = np.array([11, 10, 10, 14, 15])   # the gene predicted at each position
    assert reconstruction_order(predicted).tolist() == [11, 10, 14, 15]  # first occurrences
    assert reconstruction_order([-1, 3, -1, 3, 2]).tolist() == [3, 2]   # no prediction: skipped
    assert topk_overlap(genes, predicted, 2) == pytest.approx(1.0)        # {10, 11} vs {11, 10}
    assert topk_overlap(genes, predicted, 3) == pytest.approx(2 / 3)      # {10, 11, 12} vs {11, 10, 14}
    assert topk_overlap(genes, predicted, 10) == pytest.approx(3 / 5)     # k capped at the 5 input genes
    x, y = rank_pairs(genes, predicted)
    assert x.tolist() == [0, 1, 4] and y.tolist() == [1, 0, 2]          # genes 10, 11, 14
    # Spearman of (0, 1, 4) vs (1, 0, 2): ranks (1, 2, 3) vs (2, 1, 3), d = (-1, 1, 0): 1 - 6 * 2 / (3 * 8)
    assert rank_spearman(genes, predicted) == pytest.approx(0.5)
    assert np.isnan(rank_spearman(genes, [10, 11, 20, 21, 22]))          # two shared genes: no value
    per_cell = score_reconstruction([genes, genes], [predicted, genes], top_k=(2, 3))
    assert per_cell.columns.tolist() == ["n_genes", "overlap_top2", "overlap_top3", "spearman"]
    assert per_cell["overlap_top3"].tolist() == pytest.approx([2 / 3, 1.0])
    assert per_cell["spearman"].tolist() == pytest.approx([0.5, 1.0])
    summary = summarize_reconstruction(per_cell)
    assert summary["overlap_top3"] == pytest.approx(5 / 6) and summary["spearman"] == pytest.approx(0.75)
    assert summary["n_cells"] == 2 and summary["n_cells_spearman"] == 2
    with pytest.raises(InputError, match="predictions"):
        score_reconstruction([genes], [predicted[:3]])

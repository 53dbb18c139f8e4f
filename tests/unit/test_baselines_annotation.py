"""Annotation baselines against independent references (sklearn called directly, numpy SVD)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.baselines import annotate_baseline, reference_pca, run_annotation_baseline
from cellmamba.errors import InputError


def _dataset(n_ref=90, n_query=45, n_genes=40, seed=0, shift=3.0, x_kind="log1p_norm"):
    """Three well-separated cell types; X is log-normalised-like (non-negative, continuous)."""
    rng = np.random.default_rng(seed)
    n = n_ref + n_query
    types = np.array(["alpha", "beta", "gamma"])[np.arange(n) % 3]
    base = rng.uniform(0, 1, n_genes)
    centres = {t: base.copy() for t in ("alpha", "beta", "gamma")}
    for i, t in enumerate(("alpha", "beta", "gamma")):
        centres[t][i * 10:(i + 1) * 10] += shift  # ten marker genes per type
    X = np.stack([centres[t] for t in types]) + rng.normal(0, 0.3, (n, n_genes))
    X = np.clip(X, 0, None).astype(np.float32)
    obs = pd.DataFrame({"cell_type": types, "batch": "b0",
                        "split": ["reference"] * n_ref + ["query"] * n_query},
                       index=[f"cell{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=obs,
                       var=pd.DataFrame({"gene_name": [f"G{j}" for j in range(n_genes)]},
                                        index=[f"G{j}" for j in range(n_genes)]))
    adata.uns["cellmamba"] = {"x_kind": x_kind}
    return adata


def test_logreg_recovers_labels_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    adata = _dataset()
    table = annotate_baseline(adata, "logreg", seed=0, C=0.5)
    assert list(table.columns) == ["cell", "split", "cell_type", "predicted"]
    assert list(table["cell"]) == list(adata.obs_names)
    query = table["split"] == "query"
    assert (table.loc[~query, "predicted"] == "").all()
    assert (table.loc[query, "predicted"] == table.loc[query, "cell_type"]).all()

    X = adata.X.toarray()
    ref = (adata.obs["split"] == "reference").to_numpy()
    clf = LogisticRegression(C=0.5, max_iter=1000, random_state=0).fit(X[ref], adata.obs["cell_type"][ref])
    direct = clf.predict(X[~ref])
    np.testing.assert_array_equal(table.loc[query, "predicted"].to_numpy(dtype=str), direct)
    # the query cells of a harder (overlapping) dataset: still identical to sklearn
    hard = _dataset(shift=0.1, seed=1)
    table = annotate_baseline(hard, "logreg", seed=0, C=0.5)
    Xh = hard.X.toarray()
    direct = LogisticRegression(C=0.5, max_iter=1000, random_state=0).fit(Xh[ref], hard.obs["cell_type"][ref])
    np.testing.assert_array_equal(table.loc[query, "predicted"].to_numpy(dtype=str), direct.predict(Xh[~ref]))
    assert 0.3 < (table.loc[query, "predicted"] == table.loc[query, "cell_type"]).mean() < 1.0


def test_logreg_cross_validated_c_and_l1():
    adata = _dataset()
    table = annotate_baseline(adata, "logreg", seed=0, C=[0.01, 1.0], penalty="l1", cv_folds=3,
                              max_iter=5000)
    query = table["split"] == "query"
    assert (table.loc[query, "predicted"] == table.loc[query, "cell_type"]).all()
    with pytest.raises(InputError, match="cv_folds"):
        annotate_baseline(_dataset(n_ref=6, n_query=3), "logreg", seed=0, C=[0.1, 1.0], cv_folds=3)


def test_reference_pca_equals_manual_svd():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(8, 5))
    query = rng.normal(size=(4, 5))
    mean = ref.mean(axis=0)
    _, _, Vt = np.linalg.svd(ref - mean, full_matrices=False)
    want_ref, want_query = (ref - mean) @ Vt[:2].T, (query - mean) @ Vt[:2].T
    for a, b in ((ref, query), (sp.csr_matrix(ref), sp.csr_matrix(query))):
        Z_ref, Z_query, _ = reference_pca(a, b, n_comps=2, seed=0)
        sign = np.sign(np.sum(Z_ref * want_ref, axis=0))  # components are defined up to sign
        np.testing.assert_allclose(Z_ref * sign, want_ref, atol=1e-5)
        np.testing.assert_allclose(Z_query * sign, want_query, atol=1e-5)
    with pytest.raises(InputError, match="n_comps"):
        reference_pca(ref, query, n_comps=5, seed=0)


def test_knn_pca_votes_in_reference_pc_space():
    adata = _dataset(n_ref=30, n_query=12, n_genes=12, shift=0.5, seed=4)
    table = annotate_baseline(adata, "knn_pca", seed=0, n_comps=3, n_neighbors=5)
    X = adata.X.toarray().astype(np.float64)
    ref = (adata.obs["split"] == "reference").to_numpy()
    mean = X[ref].mean(axis=0)
    _, _, Vt = np.linalg.svd(X[ref] - mean, full_matrices=False)
    Z_ref, Z_query = (X[ref] - mean) @ Vt[:3].T, (X[~ref] - mean) @ Vt[:3].T
    labels = adata.obs["cell_type"].to_numpy()[ref]
    expected = []
    for z in Z_query:
        nearest = np.argsort(np.linalg.norm(Z_ref - z, axis=1))[:5]
        votes = pd.Series(labels[nearest]).value_counts()
        expected.append(sorted(votes.index[votes == votes.max()])[0])  # ties: first label
    np.testing.assert_array_equal(table.loc[table["split"] == "query", "predicted"].to_numpy(dtype=str), expected)


def test_knn_pca_recovers_separated_labels_and_counts_input():
    adata = _dataset()
    counts = np.random.default_rng(0).poisson(np.expm1(adata.X.toarray())).astype(np.float32)
    adata.layers["counts"] = sp.csr_matrix(counts)  # log_normalized then uses the counts
    table = annotate_baseline(adata, "knn_pca", seed=0, n_comps=10)
    query = table["split"] == "query"
    assert (table.loc[query, "predicted"] == table.loc[query, "cell_type"]).mean() > 0.95


def test_annotation_errors_name_the_key():
    adata = _dataset()
    with pytest.raises(InputError, match="'svm'"):
        annotate_baseline(adata, "svm", seed=0)
    with pytest.raises(InputError, match="n_neigbors"):
        annotate_baseline(adata, "knn_pca", seed=0, n_neigbors=5)
    with pytest.raises(InputError, match="'C'"):
        annotate_baseline(adata, "logreg", seed=0, C=-1)
    bad = adata.copy()
    bad.obs["split"] = "reference"
    with pytest.raises(InputError, match="query"):
        annotate_baseline(bad, "logreg", seed=0)


def test_run_annotation_baseline_writes_csv(tmp_path):
    adata = _dataset()
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "res" / "predictions.csv"
    table = run_annotation_baseline(path, out, method="knn_pca", seed=0, settings={"n_comps": 5})
    back = pd.read_csv(out, keep_default_na=False)
    assert list(back.columns) == ["cell", "split", "cell_type", "predicted"]
    pd.testing.assert_frame_equal(back, table.astype({"predicted": str}), check_dtype=False)
    assert not list(out.parent.glob(".*tmp*"))

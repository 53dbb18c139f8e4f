"""Data-input cases a user meets (issue 19): each is refused with a message naming the file, the
key or value and what was expected, and nothing is written. Fixtures are built here by hand."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.datasets import prepare_dataset, read_user_h5ad, validate_standard
from cellmamba.errors import InputError

SYMBOLS = ["CD3E", "CD19", "NKG7", "LYZ", "MS4A1", "GNLY"]


def _user_file(tmp_path, X, *, name="mine.h5ad"):
    X = np.asarray(X, dtype=np.float32)
    n = X.shape[0]
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"celltype": rng.choice(["T", "B"], size=n), "donor": np.where(np.arange(n) % 2, "d1", "d2"),
                        "part": np.where(np.arange(n) < n // 2, "reference", "query")},
                       index=[f"c{i}" for i in range(n)])
    path = tmp_path / name
    ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=SYMBOLS[:X.shape[1]])).write_h5ad(path)
    return path


def _entry(path, x_kind, task="annotation", **keys):
    keys = {"label_key": "celltype", "split_key": "part" if task == "annotation" else None, **keys}
    return {"task": task, "reader": "user_h5ad", "files": {"h5ad": {"path": str(path)}}, "keys": keys,
            "x_kind": x_kind, "protocol": {}, "simulated": False}


def _prepare(tmp_path, path, x_kind, **kw):
    out = tmp_path / "results" / "mine.h5ad"
    try:
        return prepare_dataset(_entry(path, x_kind, **kw), {"h5ad": path}, out, dataset="mine")
    finally:
        # nothing half-written: the output (and its temporary) exist only after success
        leftovers = [p for p in out.parent.glob("*")] if out.parent.exists() else []
        assert all(p == out for p in leftovers), leftovers


def _lognorm(rng, n=20, g=6):
    counts = rng.poisson(3.0, size=(n, g)).astype(np.float64) + 1
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_log1p_refused_with_count(tmp_path, bad):
    X = _lognorm(np.random.default_rng(1))
    X[0, 1] = X[3, 2] = X[5, 0] = bad
    path = _user_file(tmp_path, X)
    with pytest.raises(InputError, match=r"mine\.h5ad.*3 non-finite"):
        _prepare(tmp_path, path, "log1p_norm")
    assert not (tmp_path / "results" / "mine.h5ad").exists()


def test_nonfinite_counts_refused(tmp_path):
    X = np.random.default_rng(2).poisson(2.0, size=(10, 6)).astype(np.float32)
    X[2, 2] = np.nan
    with pytest.raises(InputError, match=r"mine\.h5ad.*1 non-finite"):
        _prepare(tmp_path, _user_file(tmp_path, X), "counts")


def test_validate_standard_counts_nonfinite_values():
    X = sp.csr_matrix(np.array([[1.0, np.nan], [np.inf, 2.0], [0.0, -np.inf]], dtype=np.float32))
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"cell_type": ["a", "b", "c"], "batch": ["x", "y", "x"]},
                                              index=["c0", "c1", "c2"]),
                       var=pd.DataFrame({"gene_name": ["A", "B"]}, index=["A", "B"]))
    adata.uns["cellmamba"] = {"x_kind": "log1p_norm"}
    with pytest.raises(InputError, match=r"somefile\.h5ad: X holds 3 non-finite values"):
        validate_standard(adata, "integration", source="somefile.h5ad")


def test_counts_declared_log1p_refused(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.poisson(2.0, size=(20, 6)).astype(np.float32)  # integers, max well below the old range limit of 50
    assert 2 <= X.max() < 20
    with pytest.raises(InputError, match=r"mine\.h5ad.*look like raw counts; set x_kind: counts"):
        _prepare(tmp_path, _user_file(tmp_path, X), "log1p_norm")
    # the same data declared counts pass; real log1p values pass as log1p_norm
    assert _prepare(tmp_path, _user_file(tmp_path, X), "counts").uns["cellmamba"]["x_kind"] == "counts"
    assert _prepare(tmp_path, _user_file(tmp_path, _lognorm(rng)), "log1p_norm").n_obs == 20


def test_log1p_edge_cases():
    from cellmamba.datasets import check_log1p_norm

    check_log1p_norm(sp.csr_matrix(np.array([[0.0, 1.0], [1.0, 0.0]])), "binary.h5ad")  # 0/1 only: not evidence
    check_log1p_norm(sp.csr_matrix((3, 2)), "empty.h5ad")
    with pytest.raises(InputError, match=r"neg\.h5ad: X ranges over \[-1.*scaled"):
        check_log1p_norm(np.array([[-1.0, 2.5]]), "neg.h5ad")
    with pytest.raises(InputError, match=r"big\.h5ad.*\[0, 50\].*counts or normalized"):
        check_log1p_norm(np.array([[0.0, 812.5]]), "big.h5ad")


@pytest.mark.parametrize("n_cells, task", [(0, "annotation"), (1, "annotation"), (0, "integration"),
                                           (1, "integration")])
def test_empty_or_single_cell_file_refused(tmp_path, n_cells, task):
    path = _user_file(tmp_path, np.ones((n_cells, 6)))
    keys = {"batch_key": "donor"} if task == "integration" else {}
    word = "cell" if n_cells == 1 else "cells"
    with pytest.raises(InputError, match=rf"mine\.h5ad: has {n_cells} {word}; a dataset needs at least 2"):
        _prepare(tmp_path, path, "counts", task=task, **keys)


def test_validate_standard_counts_cells_and_genes():
    obs = pd.DataFrame({"cell_type": ["a"], "batch": ["x"]}, index=["c0"])
    one = ad.AnnData(X=sp.csr_matrix(np.ones((1, 2), dtype=np.float32)), obs=obs,
                     var=pd.DataFrame({"gene_name": ["A", "B"]}, index=["A", "B"]), uns={"cellmamba": {"x_kind": "counts"}})
    with pytest.raises(InputError, match="one.h5ad: has 1 cell;"):
        validate_standard(one, "integration", source="one.h5ad")
    obs = pd.DataFrame({"cell_type": ["a", "b"], "batch": ["x", "y"]}, index=["c0", "c1"])
    nogenes = ad.AnnData(X=sp.csr_matrix((2, 0), dtype=np.float32), obs=obs,
                         var=pd.DataFrame({"gene_name": []}, index=pd.Index([], dtype=str)),
                         uns={"cellmamba": {"x_kind": "counts"}})
    with pytest.raises(InputError, match="g.h5ad: has 2 cells but no genes"):
        validate_standard(nogenes, "integration", source="g.h5ad")


def test_integration_without_batch_key_names_the_config_key(tmp_path):
    path = _user_file(tmp_path, np.ones((4, 6)))
    with pytest.raises(InputError, match=r"mine\.h5ad: the integration task needs "
                                         r"evaluation\.user_datasets\.mine\.batch_key") as err:
        _prepare(tmp_path, path, "counts", task="integration")
    assert "keys.batch_key" not in str(err.value)
    with pytest.raises(InputError, match=r"evaluation\.user_datasets\.mine\.split_key"):
        _prepare(tmp_path, path, "counts", split_key=None)
    # the reader alone (no workflow name) still names the config key's form
    with pytest.raises(InputError, match=r"evaluation\.user_datasets\.<name>\.batch_key"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype"}, x_kind="counts", task="integration")


# --------------------------------------------------------------------------- x_kind normalized (TPM / FPKM / CPM)
def test_normalized_cpm_gives_the_log_normalised_values_of_its_counts(tmp_path):
    """CPM = counts / total x 1e6: rescaled per cell to 1e4 and log1p'd, it must equal the counts path."""
    from cellmamba.datasets import counts_matrix, log_normalized

    rng = np.random.default_rng(5)
    counts = rng.poisson(4.0, size=(12, 6)).astype(np.float64) + np.eye(12, 6)  # no all-zero cell
    cpm = counts / counts.sum(axis=1, keepdims=True) * 1e6
    adata = _prepare(tmp_path, _user_file(tmp_path, cpm), "normalized")
    assert adata.uns["cellmamba"]["x_kind"] == "normalized" and "counts" not in adata.layers
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)  # by hand, from the counts
    np.testing.assert_allclose(log_normalized(adata).toarray(), expected, rtol=1e-5)
    with pytest.raises(InputError, match=r"no raw counts .*x_kind is 'normalized'.*needs counts"):
        counts_matrix(adata)  # scVI and seurat_v3 HVGs go through counts_matrix


def test_normalized_refuses_negative_values(tmp_path):
    X = np.abs(np.random.default_rng(6).normal(size=(8, 6))) * 100
    X[1, 1] = -3.0
    with pytest.raises(InputError, match=r"mine\.h5ad: X holds negative values.*'normalized'.*TPM"):
        _prepare(tmp_path, _user_file(tmp_path, X), "normalized")


def test_real_smartseq_fpkm_as_normalized(shared_data, tmp_path):
    """HSMM (Trapnell 2014): 271 cells x 47,192 FPKM with versioned Ensembl ids, read as x_kind normalized."""
    from cellmamba.datasets import log_normalized
    from cellmamba.tasks import vocabulary_index

    path = shared_data / "real" / "hsmm_trapnell2014_fpkm.h5ad"
    entry = {"task": "integration", "reader": "user_h5ad", "files": {"h5ad": {"path": str(path)}},
             "keys": {"label_key": "State", "batch_key": "Media"}, "x_kind": "normalized", "simulated": False}
    adata = prepare_dataset(entry, {"h5ad": path}, tmp_path / "hsmm.h5ad", dataset="hsmm")
    assert adata.shape == (271, 47192) and "counts" not in adata.layers
    lognorm = log_normalized(adata)
    np.testing.assert_allclose(np.expm1(lognorm.toarray().astype(np.float64)).sum(axis=1), 1e4, rtol=1e-3)
    # versioned ids (ENSG00000000003.10) match an unversioned vocabulary
    vocab = pd.DataFrame({"feature_id": ["ENSG00000000003", "ENSG00000000005"], "feature_name": ["TSPAN6", "TNMD"]})
    index = vocabulary_index(adata.var, vocab, source="hsmm")
    assert list(adata.var_names[:2]) == ["ENSG00000000003.10", "ENSG00000000005.5"] and list(index[:2]) == [0, 1]
    with pytest.raises(InputError, match="look like raw counts|ranges over"):
        prepare_dataset({**entry, "x_kind": "log1p_norm"}, {"h5ad": path}, tmp_path / "bad.h5ad", dataset="hsmm")


def test_normalized_tokens_equal_the_counts_tokens():
    """Binned and rank tokens of CPM data (x_kind normalized) are those of the counts it came from."""
    from cellmamba.tasks import tokenize_dataset

    rng = np.random.default_rng(8)
    counts = rng.poisson(3.0, size=(10, 6)).astype(np.float32) + np.eye(10, 6, dtype=np.float32)
    var = pd.DataFrame({"gene_name": SYMBOLS}, index=SYMBOLS)
    vocab = pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(6)], "feature_name": SYMBOLS[::-1],
                          "nonzero_median": np.linspace(1.0, 3.0, 6)})
    raw = ad.AnnData(X=sp.csr_matrix(counts), var=var, uns={"cellmamba": {"x_kind": "counts"}})
    cpm = ad.AnnData(X=sp.csr_matrix(counts / counts.sum(axis=1, keepdims=True) * 1e6), var=var,
                     uns={"cellmamba": {"x_kind": "normalized"}})
    for tokenizer in ("rank", "binned"):
        a = tokenize_dataset(raw, vocab, tokenizer=tokenizer, max_len=8)
        b = tokenize_dataset(cpm, vocab, tokenizer=tokenizer, max_len=8)
        assert b.value_source in ("log1p(normalized)", "expm1(log1p(normalized))")
        np.testing.assert_array_equal(a.batch.tokens, b.batch.tokens)

"""cellmamba.qc: scanpy QC metrics and filters on a census shard, checked against a hand-computed case."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.qc import QCConfig, qc_shard

# 5 cells x 6 genes; genes 4-5 are mitochondrial
COUNTS = np.array([
    [5, 3, 0, 2, 0, 0],    # 3 genes, 10 counts, 0% mito         -> kept
    [1, 0, 0, 0, 1, 0],    # 2 genes, 2 counts, 50% mito          -> fails all three
    [4, 4, 4, 0, 3, 1],    # 5 genes, 16 counts, 25% mito         -> fails max_pct_mito
    [2, 2, 2, 2, 1, 1],    # 6 genes, 10 counts, 20% mito         -> kept (<= 20)
    [9, 9, 0, 0, 0, 2],    # 3 genes, 20 counts, 10% mito         -> kept
], dtype=np.float32)
CONFIG = QCConfig(min_genes=3, min_counts=5, max_pct_mito=20.0)


def _shard(counts=COUNTS, *, drop_obs=None) -> ad.AnnData:
    n, g = counts.shape
    obs = pd.DataFrame({"soma_joinid": np.arange(n, dtype=np.int64) + 100,
                        "dataset_id": pd.Categorical(["d0", "d1", "d0", "d1", "d0"][:n])},
                       index=[str(i + 100) for i in range(n)])
    if drop_obs:
        obs = obs.drop(columns=drop_obs)
    var = pd.DataFrame({"feature_id": [f"ENSG{j}" for j in range(g)],
                        "feature_name": ["A", "B", "C", "D", "MT-CO1", "MT-ND2"][:g],
                        "feature_length": np.full(g, 100)}, index=[f"ENSG{j}" for j in range(g)])
    a = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    a.varm["measured"] = np.ones((g, 2), bool)
    a.uns["cellmamba"] = {"measured_datasets": ["d0", "d1"], "census_version": "2024-07-01", "shard_index": 0}
    return a


def _write(a, path):
    a.write_h5ad(path)
    return path


def test_qc_against_a_hand_computed_case(tmp_path):
    out = qc_shard(_write(_shard(), tmp_path / "in.h5ad"), tmp_path / "qc" / "0.h5ad", config=CONFIG)
    q = ad.read_h5ad(out)
    assert q.obs["soma_joinid"].tolist() == [100, 103, 104]
    np.testing.assert_array_equal(q.obs["n_genes_by_counts"], [3, 6, 3])
    np.testing.assert_allclose(q.obs["total_counts"], [10, 10, 20])
    np.testing.assert_allclose(q.obs["pct_counts_mt"], [0, 20, 10])
    np.testing.assert_allclose(q.obs["size_factor"], [1.0, 1.0, 2.0])  # median total of kept cells = 10
    np.testing.assert_array_equal(q.X.toarray(), COUNTS[[0, 3, 4]])  # raw counts kept
    assert q.var.columns.tolist() == ["feature_id", "feature_name", "feature_length"]  # no HVG / qc columns
    assert q.varm["measured"].shape == (6, 2)
    assert list(q.uns["cellmamba"]["measured_datasets"]) == ["d0", "d1"]
    assert q.uns["cellmamba"]["census_version"] == "2024-07-01"
    qc = q.uns["cellmamba"]["qc"]
    assert (qc["n_cells_in"], qc["n_cells_out"], qc["min_genes"], qc["max_pct_mito"]) == (5, 3, 3, 20.0)


def test_thresholds_are_inclusive_and_configurable(tmp_path):
    path = _write(_shard(), tmp_path / "in.h5ad")
    q = ad.read_h5ad(qc_shard(path, tmp_path / "o.h5ad", config=QCConfig(min_genes=0, min_counts=0, max_pct_mito=50.0)))
    assert q.n_obs == 5
    q = ad.read_h5ad(qc_shard(path, tmp_path / "o.h5ad", config=QCConfig(min_genes=4, min_counts=0, max_pct_mito=100)))
    assert q.obs["soma_joinid"].tolist() == [102, 103]


def _assert_fails(tmp_path, path, exc, match):
    out = tmp_path / "qc" / "0.h5ad"
    with pytest.raises(exc, match=match):
        qc_shard(path, out, config=CONFIG)
    assert not out.exists()
    assert not (tmp_path / "qc").exists() or list((tmp_path / "qc").iterdir()) == []


def test_non_integer_counts_are_rejected(tmp_path):
    counts = COUNTS.copy()
    counts[0, 0] = 2.5
    path = _write(_shard(counts), tmp_path / "fractional.h5ad")
    _assert_fails(tmp_path, path, InputError, r"fractional\.h5ad.*non-negative integers.*2\.5")


def test_negative_counts_are_rejected(tmp_path):
    counts = COUNTS.copy()
    counts[2, 1] = -1
    path = _write(_shard(counts), tmp_path / "negative.h5ad")
    _assert_fails(tmp_path, path, InputError, r"negative\.h5ad.*non-negative integers.*-1")


def test_missing_dataset_id_is_named(tmp_path):
    path = _write(_shard(drop_obs=["dataset_id"]), tmp_path / "nods.h5ad")
    _assert_fails(tmp_path, path, InputError, r"nods\.h5ad.*'dataset_id'")


def test_malformed_h5ad_is_named(tmp_path):
    path = tmp_path / "garbage.h5ad"
    path.write_bytes(b"this is not hdf5" * 64)
    _assert_fails(tmp_path, path, CorruptFileError, r"garbage\.h5ad")


def test_no_cell_passing_is_an_error(tmp_path):
    path = _write(_shard(), tmp_path / "in.h5ad")
    out = tmp_path / "qc" / "0.h5ad"
    with pytest.raises(InputError, match=r"in\.h5ad.*no cell of 5 passes QC"):
        qc_shard(path, out, config=QCConfig(min_genes=100))
    assert not out.exists()


@pytest.mark.parametrize("bad, match", [({"min_genes": -1}, "min_genes"), ({"max_pct_mito": 120}, "max_pct_mito"),
                                        ({"mito_prefix": ""}, "mito_prefix"), ({"min_counts": 1.5}, "min_counts")])
def test_config_validation(bad, match):
    with pytest.raises(InputError, match=match):
        QCConfig(**bad)

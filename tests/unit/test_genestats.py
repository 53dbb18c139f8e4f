"""cellmamba.genestats: exact non-zero medians etc. over QC shards, against a direct computation."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.genestats import GENE_STATS_COLUMNS, compute_gene_stats, gene_stats_table

N_GENES = 30
IDS = [f"ENSG{j:011d}" for j in range(N_GENES)]
NAMES = [f"G{j}" for j in range(N_GENES)]


def _shard(rng, n_cells, datasets, measured, *, high=50):
    """A QC-shard-like AnnData: counts only in the genes its cell's dataset measured."""
    ds = rng.choice(len(datasets), n_cells)
    counts = rng.integers(0, high, size=(n_cells, N_GENES)) * (rng.random((n_cells, N_GENES)) < 0.4)
    counts[:, ~measured[:, ds].T.any(axis=0)] = 0
    counts = counts * measured[:, ds].T
    counts[:, N_GENES - 1] = 0  # a gene never detected
    counts[:, 0] = np.where(np.arange(n_cells) % 2 == 0, 7, counts[:, 0])  # many ties
    obs = pd.DataFrame({"dataset_id": pd.Categorical(np.array(datasets)[ds])}, index=[f"c{rng.integers(1e12)}_{i}" for i in range(n_cells)])
    var = pd.DataFrame({"feature_id": IDS, "feature_name": NAMES}, index=IDS)
    a = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    a.varm["measured"] = measured
    a.uns["cellmamba"] = {"measured_datasets": list(datasets)}
    return a


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("qc")
    m1 = np.ones((N_GENES, 2), bool)
    m1[10:20, 1] = False
    m2 = np.ones((N_GENES, 1), bool)
    m2[:5, 0] = False
    adatas = [_shard(rng, 57, ["d0", "d1"], m1), _shard(rng, 40, ["d2"], m2), _shard(rng, 33, ["d0", "d1"], m1, high=5000)]
    paths = []
    for i, a in enumerate(adatas):
        a.write_h5ad(root / f"{i}.h5ad")
        paths.append(root / f"{i}.h5ad")
    return paths, adatas


def _direct(adatas, target_sum):
    joined = ad.concat(adatas)
    X = joined.X.toarray().astype(np.float64)
    totals = X.sum(axis=1, keepdims=True)
    values = (X / np.where(totals > 0, totals, 1) * target_sum).astype(np.float32).astype(np.float64)
    med = np.array([np.median(values[X[:, j] > 0, j]) if (X[:, j] > 0).any() else np.nan for j in range(N_GENES)])
    measured = np.concatenate([a.varm["measured"][:, pd.Index(a.uns["cellmamba"]["measured_datasets"]).get_indexer(
        a.obs["dataset_id"].astype(str))] for a in adatas], axis=1).sum(axis=1)
    return med, (X > 0).sum(axis=0), measured


@pytest.mark.parametrize("chunk_cells", [1, 16, 10_000])
def test_gene_stats_equal_a_direct_computation(shards, tmp_path, chunk_cells):
    paths, adatas = shards
    out = compute_gene_stats(paths, tmp_path / "gene_stats.tsv", target_sum=1e4, chunk_cells=chunk_cells)
    stats = gene_stats_table(paths, target_sum=1e4, chunk_cells=chunk_cells)
    med, detected, measured = _direct(adatas, 1e4)
    np.testing.assert_array_equal(stats["nonzero_median"].to_numpy(), med)  # exact, NaN where never detected
    np.testing.assert_array_equal(stats["n_cells_detected"].to_numpy(), detected)
    np.testing.assert_array_equal(stats["n_cells_measured"].to_numpy(), measured)
    assert stats["feature_id"].tolist() == IDS and stats["feature_name"].tolist() == NAMES
    written = pd.read_csv(out, sep="\t", float_precision="round_trip")
    assert written.columns.tolist() == GENE_STATS_COLUMNS
    pd.testing.assert_frame_equal(written, stats, check_dtype=False)
    assert np.isnan(written["nonzero_median"].iloc[-1]) and written["n_cells_detected"].iloc[-1] == 0
    assert (detected % 2 == 0).any() and (detected % 2 == 1).any()  # both median branches exercised


def test_shards_read_by_worker_processes_give_the_same_table(shards):
    """The map over shards in 2 processes (each pass's histograms summed) equals the one-process
    table and the direct computation, exactly; a bad worker count is refused."""
    paths, adatas = shards
    serial = gene_stats_table(paths, target_sum=1e4, chunk_cells=16)
    parallel = gene_stats_table(paths, target_sum=1e4, chunk_cells=16, workers=2)
    pd.testing.assert_frame_equal(parallel, serial, check_exact=True)
    np.testing.assert_array_equal(parallel["nonzero_median"].to_numpy(), _direct(adatas, 1e4)[0])
    with pytest.raises(InputError, match="workers"):
        gene_stats_table(paths, workers=0)


def test_median_of_a_hand_computed_case(tmp_path):
    counts = np.array([[1, 0], [3, 4], [1, 1], [0, 0]], np.float32)  # totals 1, 7, 2, 0
    a = _shard(np.random.default_rng(0), 4, ["d0"], np.ones((N_GENES, 1), bool))
    X = np.zeros((4, N_GENES), np.float32)
    X[:, :2] = counts
    a.X = sp.csr_matrix(X)
    a.write_h5ad(tmp_path / "0.h5ad")
    stats = gene_stats_table([tmp_path / "0.h5ad"], target_sum=100.0)
    # gene 0: 100, 300/7, 50 -> median 50; gene 1: 400/7, 50 -> mean of both
    np.testing.assert_allclose(stats["nonzero_median"].iloc[:2], [50.0, (400 / 7 + 50) / 2], rtol=1e-6)
    assert stats["n_cells_detected"].iloc[:3].tolist() == [3, 2, 0]
    assert stats["n_cells_measured"].iloc[0] == 4


def test_symbol_keyed_shard_is_mapped_through_the_gene_table(shards, tmp_path, caplog):
    paths, adatas = shards
    a = adatas[1].copy()
    a.var = pd.DataFrame(index=[*NAMES[:-2], "NOT_A_GENE", NAMES[-1]])
    a.write_h5ad(tmp_path / "symbols.h5ad")
    table = pd.DataFrame({"feature_id": IDS, "feature_name": NAMES})
    vocab = table.copy()
    caplog.set_level("INFO")
    stats = gene_stats_table([paths[0], tmp_path / "symbols.h5ad"], vocabulary=vocab, gene_table=table)
    assert "1 unknown" in caplog.text and "1 of 30 genes are not in the vocabulary" in caplog.text
    direct = _direct([adatas[0], adatas[1]], 1e4)
    np.testing.assert_array_equal(stats["nonzero_median"].to_numpy()[:-2], direct[0][:-2])


def test_bad_inputs_are_named_and_leave_nothing(shards, tmp_path):
    paths, adatas = shards
    out = tmp_path / "stats" / "gene_stats.tsv"
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"\x00\x01 not hdf5" * 100)
    with pytest.raises(CorruptFileError, match="garbage.h5ad"):
        compute_gene_stats([paths[0], garbage], out)
    neg = adatas[0].copy()
    neg.X = neg.X.copy()
    neg.X.data[3] = -2
    neg.write_h5ad(tmp_path / "negative.h5ad")
    with pytest.raises(InputError, match=r"negative\.h5ad.*negative"):
        compute_gene_stats([paths[1], tmp_path / "negative.h5ad"], out)
    nods = adatas[0].copy()
    del nods.obs["dataset_id"]
    nods.write_h5ad(tmp_path / "nods.h5ad")
    with pytest.raises(InputError, match=r"nods\.h5ad.*'dataset_id'"):
        compute_gene_stats([tmp_path / "nods.h5ad"], out)
    with pytest.raises(InputError, match="no shard"):
        compute_gene_stats([], out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

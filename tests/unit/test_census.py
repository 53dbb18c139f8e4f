"""cellmamba.census and cellmamba.census_store: a local Census-shaped store, plan, shard download."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.census import CensusConfig, download_shard, gene_table_path, plan_census, read_plan
from cellmamba.census_store import build_demo_census, build_local_census
from cellmamba.errors import CorruptFileError, InputError

N_GENES = 40


def _gene_table() -> pd.DataFrame:
    names = [f"G{j}" for j in range(N_GENES - 3)] + ["MT-CO1", "MT-ND1", "MT-ATP6"]
    return pd.DataFrame({"feature_id": [f"ENSG{j:011d}" for j in range(N_GENES)], "feature_name": names,
                         "feature_length": np.arange(N_GENES) * 10 + 100})


def _datasets(seed: int = 0) -> dict[str, ad.AnnData]:
    """Three datasets with different measured genes; 'ds_b' has some non-primary cells."""
    rng = np.random.default_rng(seed)
    table = _gene_table()
    spec = {"ds_a": (23, np.arange(0, N_GENES)),
            "ds_b": (31, np.arange(5, 30)),
            "ds_c": (17, np.r_[0:10, 37:40])}
    out = {}
    for ds_id, (n, genes) in spec.items():
        counts = rng.poisson(1.5, size=(n, len(genes))) * (rng.random((n, len(genes))) < 0.5)
        obs = pd.DataFrame({"cell_type": rng.choice(["T", "B", "NK"], n),
                            "is_primary_data": np.ones(n, bool) if ds_id != "ds_b" else np.arange(n) % 4 != 0},
                           index=[f"{ds_id}_{i}" for i in range(n)])
        out[ds_id] = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)), obs=obs,
                                var=pd.DataFrame(index=table["feature_id"].to_numpy()[genes]))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("census") / "soma"
    build_local_census(_datasets(), path, gene_table=_gene_table(), census_version="2024-07-01",
                       dataset_metadata={"ds_c": {"collection_doi": "10.1000/held-out"}})
    return path


def _config(store, **kw) -> CensusConfig:
    kw = {"uri": str(store), "n_shards": 3, "chunk_cells": 7, "obs_columns": ["cell_type", "assay"], **kw}
    return CensusConfig(**kw)


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name) if directory.exists() else []


def _source_matrix() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense (cells, genes) counts, dataset ids and is_primary_data in census soma_joinid order."""
    table = _gene_table()
    blocks, ds, prim = [], [], []
    for ds_id, a in _datasets().items():
        dense = np.zeros((a.n_obs, N_GENES), np.float32)
        dense[:, pd.Index(table["feature_id"]).get_indexer(a.var_names)] = a.X.toarray()
        blocks.append(dense)
        ds += [ds_id] * a.n_obs
        prim.append(a.obs["is_primary_data"].to_numpy())
    return np.vstack(blocks), np.array(ds), np.concatenate(prim)


def test_plan_and_download_reproduce_the_source(store, tmp_path):
    config = _config(store, obs_value_filter="")
    plan = plan_census(config, tmp_path / "plan.parquet")
    dense, ds, _ = _source_matrix()
    assert plan["soma_joinid"].tolist() == list(range(len(dense)))
    sizes = plan.groupby("shard").size().to_numpy()
    assert len(sizes) == 3 and sizes.max() - sizes.min() <= 1
    assert (np.diff(plan["shard"].to_numpy()) >= 0).all()  # contiguous ranges
    genes = pd.read_csv(gene_table_path(tmp_path / "plan.parquet"), sep="\t")
    assert genes["feature_id"].tolist() == _gene_table()["feature_id"].tolist()

    shards = []
    for i in range(3):
        download_shard(config, tmp_path / "plan.parquet", i, tmp_path / f"{i}.h5ad")
        shards.append(ad.read_h5ad(tmp_path / f"{i}.h5ad"))
    for a in shards:
        assert sp.isspmatrix_csr(a.X) or isinstance(a.X, sp.csr_array)
        assert a.X.dtype == np.float32
        assert a.var_names.tolist() == _gene_table()["feature_id"].tolist()
        assert a.var["feature_name"].tolist() == _gene_table()["feature_name"].tolist()
        assert a.obs_names.tolist() == a.obs["soma_joinid"].astype(str).tolist()
        assert a.obs["soma_joinid"].dtype == np.int64
        assert isinstance(a.obs["dataset_id"].dtype, pd.CategoricalDtype)
        assert {"cell_type", "assay"} <= set(a.obs)
        names = list(a.uns["cellmamba"]["measured_datasets"])
        assert set(a.obs["dataset_id"].astype(str)) <= set(names)
        assert a.varm["measured"].dtype == bool and a.varm["measured"].shape == (N_GENES, len(names))
        # measured mask = each dataset's own gene set
        for j, name in enumerate(names):
            expected = pd.Index(_gene_table()["feature_id"]).isin(_datasets()[name].var_names)
            np.testing.assert_array_equal(a.varm["measured"][:, j], expected)
    joined = ad.concat(shards)
    np.testing.assert_array_equal(joined.obs["soma_joinid"].to_numpy(), np.arange(len(dense)))
    np.testing.assert_array_equal(joined.obs["dataset_id"].astype(str).to_numpy(), ds)
    np.testing.assert_array_equal(joined.X.toarray(), dense)
    # ds_b did not measure gene 0 and ds_c did not measure gene 20: flagged, not zeros-as-measured
    b = next(a for a in shards if "ds_b" in list(a.uns["cellmamba"]["measured_datasets"]))
    col = list(b.uns["cellmamba"]["measured_datasets"]).index("ds_b")
    assert not b.varm["measured"][0, col] and b.varm["measured"][5, col]


def test_shards_do_not_depend_on_the_chunk_size(store, tmp_path):
    outs = []
    for chunk in (1, 1000):
        config = _config(store, chunk_cells=chunk, n_shards=2)
        plan_census(config, tmp_path / f"plan{chunk}.parquet")
        download_shard(config, tmp_path / f"plan{chunk}.parquet", 1, tmp_path / f"s{chunk}.h5ad")
        outs.append(ad.read_h5ad(tmp_path / f"s{chunk}.h5ad"))
    assert outs[0].n_obs > 10
    assert (outs[0].X != outs[1].X).nnz == 0
    assert outs[0].obs_names.tolist() == outs[1].obs_names.tolist()


def test_value_filter_and_exclusions_are_honoured(store, tmp_path):
    dense, ds, primary = _source_matrix()
    config = _config(store, exclude_dataset_ids=["ds_a", "not-in-census"], n_shards=2)
    plan = plan_census(config, tmp_path / "plan.parquet")
    expected = np.flatnonzero(primary & (ds != "ds_a"))
    np.testing.assert_array_equal(plan["soma_joinid"].to_numpy(), expected)
    assert (ds == "ds_b").sum() > (plan["dataset_id"] == "ds_b").sum() > 0  # non-primary cells dropped
    _, meta = read_plan(tmp_path / "plan.parquet")
    assert meta["excluded_dataset_ids"] == ["ds_a", "not-in-census"]

    by_doi = plan_census(_config(store, exclude_collection_dois=["10.1000/held-out"], n_shards=2),
                         tmp_path / "plan2.parquet")
    assert "ds_c" not in set(by_doi["dataset_id"]) and {"ds_a", "ds_b"} <= set(by_doi["dataset_id"])

    download_shard(config, tmp_path / "plan.parquet", 0, tmp_path / "0.h5ad")
    shard = ad.read_h5ad(tmp_path / "0.h5ad")
    assert "ds_a" not in set(shard.obs["dataset_id"].astype(str))
    np.testing.assert_array_equal(shard.X.toarray(), dense[shard.obs["soma_joinid"].to_numpy()])


def test_max_cells_is_a_seeded_subset(store, tmp_path):
    a = plan_census(_config(store, max_cells=20, seed=3), tmp_path / "a.parquet")
    b = plan_census(_config(store, max_cells=20, seed=3), tmp_path / "b.parquet")
    c = plan_census(_config(store, max_cells=20, seed=4), tmp_path / "c.parquet")
    assert len(a) == 20 and a.equals(b) and not a["soma_joinid"].equals(c["soma_joinid"])
    assert a["soma_joinid"].is_monotonic_increasing


def test_census_api_reads_the_local_store(store):
    import cellxgene_census

    with cellxgene_census.open_soma(uri=str(store)) as census:
        presence = cellxgene_census.get_presence_matrix(census, "Homo sapiens")
        adata = cellxgene_census.get_anndata(census, "Homo sapiens", obs_value_filter="dataset_id == 'ds_c'")
    datasets = _datasets()
    assert presence.shape == (3, N_GENES)
    np.testing.assert_array_equal(np.asarray(presence.sum(axis=1)).ravel(), [a.n_vars for a in datasets.values()])
    assert adata.n_obs == datasets["ds_c"].n_obs
    assert adata.X.sum() == datasets["ds_c"].X.sum()


def test_wrong_uri_names_it_and_writes_nothing(tmp_path):
    missing = tmp_path / "no_such_store"
    with pytest.raises(InputError, match="no_such_store"):
        plan_census(CensusConfig(uri=str(missing)), tmp_path / "out" / "plan.parquet")
    assert not (tmp_path / "out" / "plan.parquet").exists() and _leftovers(tmp_path / "out") == []
    not_soma = tmp_path / "plain_dir"
    not_soma.mkdir()
    with pytest.raises(InputError, match="plain_dir"):
        plan_census(CensusConfig(uri=str(not_soma)), tmp_path / "out" / "plan.parquet")


def test_empty_shard_is_an_error(store, tmp_path):
    with pytest.raises(InputError, match=r"n_shards=500.*would be empty"):
        plan_census(_config(store, n_shards=500), tmp_path / "plan.parquet")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no cell selected"):
        plan_census(_config(store, exclude_dataset_ids=["ds_a", "ds_b", "ds_c"]), tmp_path / "plan.parquet")
    assert list(tmp_path.iterdir()) == []


def test_missing_obs_column_is_named(store, tmp_path):
    with pytest.raises(InputError, match="no_such_column"):
        plan_census(_config(store, obs_columns=["no_such_column"]), tmp_path / "plan.parquet")
    assert list(tmp_path.iterdir()) == []


def test_bad_value_filter_is_named(store, tmp_path):
    with pytest.raises(InputError, match="is_primary_dta"):
        plan_census(_config(store, obs_value_filter="is_primary_dta == True"), tmp_path / "plan.parquet")


ASSAYS = {"ds_a": "10x 3' v3", "ds_b": "Smart-seq2", "ds_c": "10x 3' v2"}


@pytest.fixture(scope="module")
def assay_store(tmp_path_factory):
    """The three datasets with an assay each (labels with single quotes, as the Census spells them)."""
    datasets = _datasets()
    for ds_id, a in datasets.items():
        a.obs["assay"] = ASSAYS[ds_id]
    path = tmp_path_factory.mktemp("census_assays") / "soma"
    build_local_census(datasets, path, gene_table=_gene_table(), census_version="2024-07-01")
    return path


def test_assays_keep_only_the_listed_assays_and_the_plan_records_them(assay_store, tmp_path, caplog):
    dense, ds, primary = _source_matrix()
    config = _config(assay_store, assays=["10x 3' v3", "10x 3' v2", "Drop-seq"], n_shards=2)
    assert config.value_filter == '(is_primary_data == True) and assay in ["10x 3\' v3", "10x 3\' v2", "Drop-seq"]'
    with caplog.at_level("WARNING", logger="cellmamba.census"):
        plan = plan_census(config, tmp_path / "plan.parquet")
    expected = np.flatnonzero(primary & np.isin(ds, ["ds_a", "ds_c"]))  # ds_b (Smart-seq2) left out
    np.testing.assert_array_equal(plan["soma_joinid"].to_numpy(), expected)
    assert "'Drop-seq' selects no cell" in caplog.text
    _, meta = read_plan(tmp_path / "plan.parquet")
    assert meta["assays"] == ["10x 3' v3", "10x 3' v2", "Drop-seq"] and meta["value_filter"] == config.value_filter
    assert meta["assay_cells"] == {"10x 3' v2": int((ds == "ds_c").sum()), "10x 3' v3": int((ds == "ds_a").sum())}
    # "all" keeps every assay and still counts them
    every = plan_census(_config(assay_store, n_shards=2), tmp_path / "all.parquet")
    np.testing.assert_array_equal(every["soma_joinid"].to_numpy(), np.flatnonzero(primary))
    assert read_plan(tmp_path / "all.parquet")[1]["assay_cells"]["Smart-seq2"] == int((primary & (ds == "ds_b")).sum())
    # a shard job refuses a plan made with other assays, and records its own
    with pytest.raises(InputError, match="assays"):
        download_shard(_config(assay_store, n_shards=2), tmp_path / "plan.parquet", 0, tmp_path / "0.h5ad")
    download_shard(config, tmp_path / "plan.parquet", 0, tmp_path / "0.h5ad")
    shard = ad.read_h5ad(tmp_path / "0.h5ad")
    assert set(shard.obs["assay"].astype(str)) <= {"10x 3' v3", "10x 3' v2"}
    assert list(shard.uns["cellmamba"]["assays"]) == list(config.assays)


def test_strict_exclusions_fail_on_an_exclusion_that_matches_nothing(store, tmp_path, caplog):
    """The leakage contract at plan time: a DOI or id that matches no dataset fails under
    strict_exclusions (a typo would exclude nothing), warns when unverified or not strict; the
    plan records each exclusion with the datasets and cells it removed."""
    dense, ds, primary = _source_matrix()
    typo = _config(store, exclude_collection_dois=["10.1000/held-out", "10.1000/held-uot"], strict_exclusions=True)
    with pytest.raises(InputError, match=r"collection_doi '10.1000/held-uot' matches no dataset"):
        plan_census(typo, tmp_path / "plan.parquet")
    with pytest.raises(InputError, match=r"dataset_id 'ds_z' matches no dataset"):
        plan_census(_config(store, exclude_dataset_ids=["ds_z"], strict_exclusions=True), tmp_path / "plan.parquet")
    assert not (tmp_path / "plan.parquet").exists()
    lenient = _config(store, exclude_collection_dois=["10.1000/held-out", "10.1000/held-uot"], exclude_dataset_ids=["ds_a"],
                      strict_exclusions=True, unverified_exclusions=["10.1000/held-uot"])
    with caplog.at_level("WARNING", logger="cellmamba.census"):
        plan = plan_census(lenient, tmp_path / "plan.parquet")
    assert "'10.1000/held-uot' matches no dataset of the store (a typo excludes nothing); not verified" in caplog.text
    np.testing.assert_array_equal(plan["soma_joinid"].to_numpy(), np.flatnonzero(primary & (ds == "ds_b")))
    _, meta = read_plan(tmp_path / "plan.parquet")
    assert meta["exclusions"] == [
        {"exclusion": "ds_a", "kind": "dataset_id", "verified": True, "datasets": ["ds_a"],
         "cells": int((primary & (ds == "ds_a")).sum())},
        {"exclusion": "10.1000/held-out", "kind": "collection_doi", "verified": True, "datasets": ["ds_c"],
         "cells": int((primary & (ds == "ds_c")).sum())},
        {"exclusion": "10.1000/held-uot", "kind": "collection_doi", "verified": False, "datasets": [], "cells": 0}]
    assert meta["excluded_cells"] == int((primary & (ds != "ds_b")).sum())
    with pytest.raises(InputError, match="unverified_exclusions"):
        CensusConfig(unverified_exclusions=["10.1/never-listed"])


def test_from_workflow_adds_the_registry_exclusions_to_the_configs():
    census = {"uri": "/store", "exclude_collection_dois": ["10.1/mine"], "exclude_dataset_ids": ["ds_x"],
              "strict_exclusions": True}
    exclusions = {"ms": {"collection_dois": ["10.2/ms"], "verified": False},
                  "pbmc": {"collection_dois": ["10.3/pbmc", "10.1/mine"], "dataset_ids": ["ds_p"], "verified": True},
                  "sim": {"not_in_census": "simulated"}}
    config = CensusConfig.from_workflow(census, exclusions)
    assert config.exclude_collection_dois == ("10.1/mine", "10.2/ms", "10.3/pbmc")
    assert config.exclude_dataset_ids == ("ds_p", "ds_x")
    assert config.unverified_exclusions == ("10.2/ms",) and config.strict_exclusions
    with pytest.raises(InputError, match="'ms' states no census_exclusion"):
        CensusConfig.from_workflow(census, {"ms": None})


def test_stale_plan_and_bad_shard_index(store, tmp_path):
    plan_census(_config(store), tmp_path / "plan.parquet")
    with pytest.raises(InputError, match="n_shards=3"):
        download_shard(_config(store, n_shards=4), tmp_path / "plan.parquet", 0, tmp_path / "0.h5ad")
    with pytest.raises(InputError, match="shard index 3"):
        download_shard(_config(store), tmp_path / "plan.parquet", 3, tmp_path / "3.h5ad")
    (tmp_path / "garbage.parquet").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CorruptFileError, match="garbage.parquet"):
        download_shard(_config(store), tmp_path / "garbage.parquet", 0, tmp_path / "0.h5ad")
    assert not (tmp_path / "0.h5ad").exists() and _leftovers(tmp_path) == []


def test_store_builder_rejects_non_counts_and_foreign_genes(tmp_path):
    datasets = _datasets()
    datasets["ds_a"].X = datasets["ds_a"].X * 0.5
    with pytest.raises(InputError, match=r"ds_a.*non-negative integers"):
        build_local_census(datasets, tmp_path / "s1", gene_table=_gene_table())
    datasets = _datasets()
    datasets["ds_b"].X[0, 0] = -3
    with pytest.raises(InputError, match=r"ds_b.*non-negative integers.*-3"):
        build_local_census(datasets, tmp_path / "s2", gene_table=_gene_table())
    datasets = _datasets()
    datasets["ds_c"].var_names = ["ENSG_UNKNOWN"] + list(datasets["ds_c"].var_names[1:])
    with pytest.raises(InputError, match="ENSG_UNKNOWN"):
        build_local_census(datasets, tmp_path / "s3", gene_table=_gene_table())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, match", [
    ({"n_shards": 0}, "n_shards"), ({"chunk_cells": -1}, "chunk_cells"), ({"max_cells": 0}, "max_cells"),
    ({"exclude_dataset_ids": "ds_a"}, "exclude_dataset_ids"), ({"obs_columns": ["dataset_id"]}, "dataset_id"),
    ({"uri": ""}, "uri"),
    ({"assays": "10x 3' v3"}, "assays must be"), ({"assays": []}, "assays must be"),
    ({"assays": ["Drop-seq", "Drop-seq"]}, "assays must be"),
    ({"assays": ["10x 3 v3"]}, r"\['10x 3 v3'\] are not assay labels of the public Census"),
])
def test_config_validation(bad, match):
    with pytest.raises(InputError, match=match):
        CensusConfig(**bad)


def test_assay_labels_are_checked_against_the_census_only_when_reading_it():
    assert CensusConfig(uri="/some/store", assays=["my lab's assay"]).assays == ("my lab's assay",)
    assert CensusConfig(assays=["10x 3' v3"]).assays == ("10x 3' v3",) and CensusConfig().assays == "all"
    assert CensusConfig(obs_value_filter="", assays=["Drop-seq"]).value_filter == 'assay in ["Drop-seq"]'
    assert CensusConfig(obs_value_filter="").value_filter == ""


def test_demo_store_builds_and_downloads(repo_root, tmp_path):
    """The demo's store from resources/ (real data), read through the public-census code path."""
    res = repo_root / "resources"
    store = build_demo_census(res / "demo/celltypist_sample_counts.h5ad", res / "demo/kang2018_pbmc_ctrl_stim_subset.h5ad",
                              tmp_path / "soma", gene_table=res / "genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz",
                              id2name=res / "genes/gencode44_gene_id2name.csv.gz")
    config = CensusConfig(uri=str(store), n_shards=2, chunk_cells=256)
    plan = plan_census(config, tmp_path / "plan.parquet")
    assert len(plan) == 559 + 600
    download_shard(config, tmp_path / "plan.parquet", 1, tmp_path / "1.h5ad")
    shard = ad.read_h5ad(tmp_path / "1.h5ad")
    assert set(shard.obs["dataset_id"]) == {"kang2018_pbmc"}
    measured = shard.varm["measured"][:, 0]
    assert 200 < measured.sum() <= 279 < shard.n_vars  # Kang measured only its 279 (mappable) genes
    assert shard.X[:, ~measured].nnz == 0
    kang = ad.read_h5ad(res / "demo/kang2018_pbmc_ctrl_stim_subset.h5ad")
    symbols = shard.var["feature_name"].to_numpy()[measured]
    mapped_direct = [s for s in symbols if s in kang.var_names]
    assert len(mapped_direct) == measured.sum()  # every measured gene came through its own symbol
    last = kang[-shard.n_obs:, mapped_direct].X.toarray()
    np.testing.assert_array_equal(shard[:, pd.Index(shard.var["feature_name"]).get_indexer(mapped_direct)].X.toarray(), last)


def test_store_to_gene_stats_pipeline(store, tmp_path):
    """census shards -> QC -> gene statistics equal a direct computation on the source counts."""
    from cellmamba.genestats import gene_stats_table
    from cellmamba.qc import QCConfig, qc_shard

    config = _config(store, obs_value_filter="")
    plan_census(config, tmp_path / "plan.parquet")
    qc_paths = []
    for i in range(3):
        download_shard(config, tmp_path / "plan.parquet", i, tmp_path / f"{i}.h5ad")
        qc_paths.append(qc_shard(tmp_path / f"{i}.h5ad", tmp_path / f"qc{i}.h5ad",
                                 config=QCConfig(min_genes=0, min_counts=1, max_pct_mito=100.0)))
    stats = gene_stats_table(qc_paths, target_sum=1e4, chunk_cells=5)
    dense, ds, _ = _source_matrix()
    kept = dense.sum(axis=1) > 0
    dense, ds = dense[kept].astype(np.float64), ds[kept]
    values = (dense / dense.sum(axis=1, keepdims=True) * 1e4).astype(np.float32).astype(np.float64)
    expected = [np.median(values[dense[:, j] > 0, j]) if (dense[:, j] > 0).any() else np.nan for j in range(N_GENES)]
    np.testing.assert_array_equal(stats["nonzero_median"].to_numpy(), expected)
    np.testing.assert_array_equal(stats["n_cells_detected"].to_numpy(), (dense > 0).sum(axis=0))
    n_measured = sum(pd.Index(_gene_table()["feature_id"]).isin(a.var_names).astype(int) * (ds == name).sum()
                     for name, a in _datasets().items())
    np.testing.assert_array_equal(stats["n_cells_measured"].to_numpy(), n_measured)
    assert stats["n_cells_measured"].iloc[0] < stats["n_cells_measured"].iloc[5]  # ds_b lacks gene 0

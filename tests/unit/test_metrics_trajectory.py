"""Trajectory metrics against hand-computed cases, and the trajectory task's data, embedding,
baseline and figure code (cellmamba.metrics.trajectory, issue 25).

The hand-computed line: 60 cells evenly spaced on a line, in three contiguous groups of 20 whose
published pseudotime (and measured time) is the group index 0 / 1 / 2. The diffusion pseudotime of
a line is monotone along it except at its two ends (the root sits a cell or two from the end, the
far end wiggles), and those cells all lie within the first and last group, whose pseudotime is tied:
so Spearman(group, DPT) = Spearman(group, position). With average ranks 10.5 / 30.5 / 50.5 for the
groups and 1..60 for the positions: sum (x - mean)(y - mean) = 20 x 20 x 20 x 2 = 16,000 =
sum (x - mean)^2, and sum (y - mean)^2 = 60 (60^2 - 1) / 12 = 17,995, so rho = sqrt(16000 / 17995).
"""
from __future__ import annotations

import dataclasses
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from scipy.stats import spearmanr

from cellmamba.errors import InputError
from cellmamba.metrics import TRAJECTORY_METRICS, TrajectoryReference, TrajectorySettings, score_trajectory, spearman
from cellmamba.metrics.trajectory import METRICS, diffusion_pseudotime, score_trajectory_files

RHO_LINE = math.sqrt(16000 / 17995)   # module doc
REF = TrajectoryReference(pseudotime_key="pt", label_key="group", time_key="hours")


def line(reverse_pseudotime: bool = False, n: int = 60) -> ad.AnnData:
    """The hand-computed line (module doc): embedding (n, 2) = (position, 0)."""
    group = np.repeat([0.0, 1.0, 2.0], n // 3)
    pt = 2.0 - group if reverse_pseudotime else group
    obs = pd.DataFrame({"pt": pt, "group": pt, "hours": group}, index=[f"c{i}" for i in range(n)])
    emb = np.c_[np.arange(n, dtype=np.float64), np.zeros(n)]
    return ad.AnnData(obs=obs, obsm={"X_emb": emb})


# --------------------------------------------------------------------------- spearman
def test_spearman_by_hand_and_against_scipy():
    # d = (1, 1, 1, 1, 0): rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8, abs=1e-12)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0, abs=1e-12)
    # cells with a NaN on either side are dropped; ties get average ranks, as scipy
    ref = np.array([0.0, 0.0, 1.0, np.nan, 2.0, 2.0, 3.0])
    val = np.array([0.1, 0.3, 0.2, 9.0, 0.5, np.nan, 0.4])
    ok = np.isfinite(ref) & np.isfinite(val)
    assert spearman(ref, val) == pytest.approx(spearmanr(ref[ok], val[ok]).statistic, abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, np.nan], [2, 3]))
    with pytest.raises(InputError, match="3 reference values for 2"):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------- scib's score, hand-computed
def test_declared_metrics():
    assert tuple(METRICS) == TRAJECTORY_METRICS
    assert METRICS == {"trajectory_conservation": "higher", "dpt_spearman_pseudotime": "higher",
                       "dpt_spearman_time": "higher", "root_pseudotime_quantile": "lower"}


def test_line_in_pseudotime_order_is_conserved_by_hand():
    assert RHO_LINE == pytest.approx(spearmanr(np.repeat([0, 1, 2], 20), np.arange(60)).statistic, abs=1e-12)
    scores, dpt = score_trajectory(line(), "X_emb", reference=REF)
    assert scores["trajectory_conservation"] == pytest.approx((RHO_LINE + 1) / 2, abs=1e-9)
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(RHO_LINE, abs=1e-9)
    assert scores["dpt_spearman_time"] == pytest.approx(RHO_LINE, abs=1e-9)
    assert list(dpt.index) == [f"c{i}" for i in range(60)] and dpt.between(0, 1).all()
    assert dpt.iloc[:20].max() < dpt.iloc[20:40].min() and dpt.iloc[20:40].max() < dpt.iloc[40:].min()
    # the root is a cell of the first group, whose 20 tied pseudotimes share the average rank 10.5
    assert int(dpt.attrs["root"][1:]) < 20 and dpt[dpt.attrs["root"]] == 0
    assert scores["root_pseudotime_quantile"] == pytest.approx((10.5 - 1) / 59, abs=1e-12)


def test_root_from_the_other_end_reverses_the_time_correlation():
    """Published pseudotime runs against the position: scib roots in the group of lowest mean
    pseudotime, at the far end, so the DPT agrees with the pseudotime and is reversed against the
    measured time (which runs with the position)."""
    scores, dpt = score_trajectory(line(reverse_pseudotime=True), "X_emb", reference=REF)
    assert scores["trajectory_conservation"] == pytest.approx((RHO_LINE + 1) / 2, abs=1e-9)
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(RHO_LINE, abs=1e-9)
    assert scores["dpt_spearman_time"] == pytest.approx(-RHO_LINE, abs=1e-9)
    assert dpt.iloc[40:].max() < dpt.iloc[:20].min() and int(dpt.attrs["root"][1:]) >= 40
    assert scores["root_pseudotime_quantile"] == pytest.approx((10.5 - 1) / 59, abs=1e-12)


def test_root_quantile_by_hand():
    """Distinct published pseudotimes increasing along the line: the root, a cell or two from the start,
    sits at quantile (its rank - 1) / 59."""
    adata = line()
    adata.obs = adata.obs.assign(pt=np.arange(60.0), group=np.repeat([0, 1, 2], 20).astype(str))
    scores, dpt = score_trajectory(adata, "X_emb", reference=REF)
    i = int(dpt.attrs["root"][1:])
    assert i < 5 and scores["root_pseudotime_quantile"] == pytest.approx(i / 59, abs=1e-12)


def test_scaled_correlation_is_scibs_conservation_with_missing_pseudotimes():
    """On an unstructured embedding with cells off the trajectory (NaN): our DPT is scib's, so
    2 x conservation - 1 equals our Spearman exactly, over the cells with a pseudotime."""
    rng = np.random.default_rng(0)
    n = 150
    pt = rng.uniform(size=n)
    pt[:25] = np.nan
    obs = pd.DataFrame({"pt": pt, "group": rng.integers(0, 4, n).astype(str)}, index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(obs=obs, obsm={"X_emb": rng.standard_normal((n, 6))})
    ref = TrajectoryReference(pseudotime_key="pt", label_key="group")
    scores, dpt = score_trajectory(adata, "X_emb", reference=ref)
    assert len(dpt) == 125 and list(dpt.index) == list(obs.index[25:])
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(2 * scores["trajectory_conservation"] - 1, abs=1e-12)
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(spearman(pt[25:], dpt), abs=1e-12)
    assert math.isnan(scores["dpt_spearman_time"]) and "no measured time" in scores.notes["dpt_spearman_time"]
    pd.testing.assert_series_equal(diffusion_pseudotime(adata, "X_emb", reference=ref), dpt)
    assert not adata.obsm.keys() - {"X_emb"} and list(adata.obs.columns) == ["pt", "group"]  # input untouched


def test_cells_outside_the_largest_component_get_dpt_zero():
    """A separate cluster (a second connected component of the kNN graph) gets DPT 0, as scib sets it."""
    n_line, n_far = 45, 12
    emb = np.r_[np.c_[np.arange(n_line, dtype=float), np.zeros(n_line)], np.c_[np.full(n_far, 1e4), np.arange(n_far)]]
    group = np.r_[np.repeat([0.0, 1.0, 2.0], 15), np.full(n_far, 3.0)]
    obs = pd.DataFrame({"pt": group, "group": group, "hours": group}, index=[f"c{i}" for i in range(len(group))])
    scores, dpt = score_trajectory(ad.AnnData(obs=obs, obsm={"X_emb": emb}), "X_emb", reference=REF,
                                   settings=TrajectorySettings(n_neighbors=10))
    assert (dpt.iloc[n_line:] == 0).all() and dpt.iloc[1:n_line].gt(0).sum() >= n_line - 2
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(spearmanr(group, dpt).statistic, abs=1e-12)
    assert scores["dpt_spearman_pseudotime"] == pytest.approx(2 * scores["trajectory_conservation"] - 1, abs=1e-12)


def test_no_root_cell_in_the_largest_component_scores_zero_as_scib():
    emb = np.r_[np.c_[np.arange(40, dtype=float), np.zeros(40)], np.c_[np.full(12, 1e4), np.arange(12)]]
    group = np.r_[np.full(40, 1.0), np.full(12, 0.0)]     # the root group (0) is the small component
    obs = pd.DataFrame({"pt": group, "group": group, "hours": group}, index=[f"c{i}" for i in range(52)])
    scores, dpt = score_trajectory(ad.AnnData(obs=obs, obsm={"X_emb": emb}), "X_emb", reference=REF,
                                   settings=TrajectorySettings(n_neighbors=10))
    assert scores["trajectory_conservation"] == 0.0 and "root" in scores.notes["trajectory_conservation"]
    assert math.isnan(scores["dpt_spearman_pseudotime"]) and math.isnan(scores["dpt_spearman_time"])
    assert math.isnan(scores["root_pseudotime_quantile"])
    assert dpt.isna().all() and len(dpt) == 52 and "root" not in dpt.attrs


def test_normalize_setting_scores_the_unit_rows():
    adata = line()
    adata.obsm["X_emb"] = adata.obsm["X_emb"] + np.array([0.0, 1.0])      # non-zero rows
    unit = adata.copy()
    unit.obsm["X_emb"] = unit.obsm["X_emb"] / np.linalg.norm(unit.obsm["X_emb"], axis=1, keepdims=True)
    a, _ = score_trajectory(adata, "X_emb", reference=REF, settings=TrajectorySettings(normalize=True))
    b, _ = score_trajectory(unit, "X_emb", reference=REF)
    assert dict(a) == pytest.approx(dict(b), abs=1e-6)


def _with_obs(adata, key, values):
    adata.obs = adata.obs.assign(**{key: values})


@pytest.mark.parametrize("edit,match", [
    (lambda a: setattr(a, "obs", a.obs.drop(columns="group")), r"obs\['group'\]"),
    (lambda a: _with_obs(a, "pt", np.r_[np.inf, a.obs["pt"].to_numpy()[1:]]), "not finite numbers"),
    (lambda a: _with_obs(a, "pt", np.r_[0.0, 1.0, np.full(a.n_obs - 2, np.nan)]), "need at least 3"),
    (lambda a: _with_obs(a, "hours", np.r_[np.nan, a.obs["hours"].to_numpy()[1:]]), "no finite time"),
    (lambda a: a.obsm.__setitem__("X_emb", np.r_[[[np.nan, 0.0]], a.obsm["X_emb"][1:]]), "non-finite"),
])
def test_bad_inputs_name_the_key(edit, match):
    adata = line()
    edit(adata)
    with pytest.raises(InputError, match=match):
        score_trajectory(adata, "X_emb", reference=REF)
    with pytest.raises(InputError, match="n_neighbors"):
        TrajectorySettings(n_neighbors=1)


# --------------------------------------------------------------------------- files
def _embedding_file(path, obs_names, emb, **info):
    out = ad.AnnData(X=np.zeros((len(obs_names), 0), np.float32), obs=pd.DataFrame(index=obs_names),
                     obsm={"X_emb": emb.astype(np.float32)}, uns={"cellmamba": info})
    out.write_h5ad(path)
    return path


def test_score_trajectory_files_rows_and_per_cell(tmp_path):
    data = line()
    dataset = tmp_path / "toy.h5ad"
    ad.AnnData(X=sp.csr_matrix((60, 3), dtype=np.float32), obs=data.obs).write_h5ad(dataset)
    order = np.random.default_rng(1).permutation(60)          # embedding files may hold the cells in any order
    names = data.obs_names[order]
    files = [_embedding_file(tmp_path / "a.h5ad", names, data.obsm["X_emb"][order], method="pca", seed=0),
             _embedding_file(tmp_path / "b1.h5ad", names, data.obsm["X_emb"][order][:, ::-1].copy(),
                             method="m_scratch", seed=1, n_params=123),
             _embedding_file(tmp_path / "b0.h5ad", names, data.obsm["X_emb"][order], method="m_scratch", seed=0,
                             n_params=123)]
    ref = {"pseudotime_key": "pt", "label_key": "group", "time_key": "hours", "modality": None}
    metrics, per_cell = score_trajectory_files(dataset, files, reference=ref, settings={"n_neighbors": 15},
                                               extra={"simulated": False})
    assert set(metrics["task"]) == {"trajectory"} and set(metrics["dataset"]) == {"toy"}
    assert len(metrics) == 3 * len(TRAJECTORY_METRICS) and (metrics["n_cells"] == 60).all()
    pca = metrics[metrics["method"] == "pca"].set_index("metric")["value"]
    assert pca["trajectory_conservation"] == pytest.approx((RHO_LINE + 1) / 2, abs=1e-9)
    assert metrics.loc[metrics["method"] == "pca", "n_params"].isna().all()
    assert (metrics.loc[metrics["method"] == "m_scratch", "n_params"] == 123).all()
    # the figure's cells: each method's first seed, in dataset order
    assert sorted(per_cell.groupby("method")["seed"].unique().map(list).to_dict().items()) == [
        ("m_scratch", [0]), ("pca", [0])]
    block = per_cell[per_cell["method"] == "pca"]
    assert list(block["cell"]) == list(data.obs_names) and (block["measured_time"].to_numpy() == data.obs["hours"]).all()
    assert block["root"].sum() == 1 and block.loc[block["root"], "published_pseudotime"].iloc[0] == 0
    bad = _embedding_file(tmp_path / "bad.h5ad", names[:-1], data.obsm["X_emb"][:-1], method="x", seed=0)
    with pytest.raises(InputError, match="1 missing"):
        score_trajectory_files(dataset, [bad], reference=ref)
    with pytest.raises(InputError, match=r"references\.toy"):
        score_trajectory_files(dataset, files[:1], reference={**ref, "pseudotime_key": "GEX_pseudotime_order"})


# --------------------------------------------------------------------------- data, baseline, embedding
def _hsmm_like(path, n_cells=30, n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.gamma(0.5, 20.0, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.5)
    hours = np.repeat(["0", "24", "48"], n_cells // 3)
    obs = pd.DataFrame({"Hours": pd.Categorical(hours), "Pseudotime": np.linspace(0, 70, n_cells),
                        "State": pd.Categorical(rng.integers(1, 4, n_cells).astype(str))},
                       index=[f"T{i}" for i in range(n_cells)])
    var = pd.DataFrame({"gene_short_name": [f"G{j}" for j in range(n_genes)]},
                       index=[f"ENSG{j:011d}.{j % 7 + 1}" for j in range(n_genes)])
    ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var).write_h5ad(path)
    return path


HSMM_KEYS = {"pseudotime_key": "Pseudotime", "time_key": "Hours", "gene_name_key": "gene_short_name"}


def test_read_hsmm_standardises_the_trajectory_columns(tmp_path):
    from cellmamba.datasets import read_dataset

    adata = read_dataset("hsmm", {"h5ad": _hsmm_like(tmp_path / "h.h5ad")}, task="trajectory", keys=HSMM_KEYS,
                         x_kind="normalized")
    assert adata.obs["pseudotime"].dtype == np.float64 and sorted(set(adata.obs["time"])) == [0.0, 24.0, 48.0]
    assert adata.var["gene_id"].iloc[3] == "ENSG00000000003" and adata.var["gene_name"].iloc[3] == "G3"
    assert adata.uns["cellmamba"]["x_kind"] == "normalized" and "Hours" in adata.obs  # original columns kept
    with pytest.raises(InputError, match="registry entry says 'counts'"):
        read_dataset("hsmm", {"h5ad": tmp_path / "h.h5ad"}, task="trajectory", keys=HSMM_KEYS, x_kind="counts")


def test_read_hsmm_refuses_text_times(tmp_path):
    from cellmamba.datasets import read_hsmm

    path = _hsmm_like(tmp_path / "h.h5ad")
    a = ad.read_h5ad(path)
    a.obs["Hours"] = pd.Categorical(["0h"] * a.n_obs)
    a.write_h5ad(path)
    with pytest.raises(InputError, match=r"obs\['Hours'\] \(measured time\) has 30 values that are not numbers"):
        read_hsmm({"h5ad": path}, keys=HSMM_KEYS)


def test_shipped_hsmm_resource_and_registry_entry(repo_root):
    from cellmamba.datasets import read_dataset

    entry = yaml.safe_load((repo_root / "config" / "datasets.yaml").read_text())["datasets"]["hsmm"]
    files = {k: repo_root / v["path"] for k, v in entry["files"].items()}
    adata = read_dataset(entry["reader"], files, task=entry["task"], keys=entry["keys"], x_kind=entry["x_kind"])
    assert adata.shape == (271, 26521) and np.isfinite(adata.obs["pseudotime"]).all()
    assert sorted(set(adata.obs["time"])) == [0.0, 24.0, 48.0, 72.0]
    assert (np.asarray((adata.X > 0).sum(axis=0)).ravel() > 0).all()   # genes expressed in no cell were dropped


def test_pca_baseline_file(tmp_path):
    from cellmamba.baselines import run_trajectory_baseline
    from cellmamba.datasets import prepare_dataset

    prepared = tmp_path / "hsmm.h5ad"
    prepare_dataset({"task": "trajectory", "reader": "hsmm", "files": {"h5ad": {"path": "h.h5ad"}},
                     "keys": HSMM_KEYS, "x_kind": "normalized"}, {"h5ad": _hsmm_like(tmp_path / "h.h5ad")},
                    prepared, dataset="hsmm")
    out = run_trajectory_baseline(prepared, tmp_path / "pca.h5ad", seed=0, settings={"n_hvg": 20, "n_comps": 10})
    emb = out.obsm["X_emb"]
    assert emb.shape == (30, 10) and np.isfinite(emb).all() and out.uns["cellmamba"]["method"] == "pca"
    again = run_trajectory_baseline(prepared, tmp_path / "pca2.h5ad", seed=0, settings={"n_hvg": 20, "n_comps": 10})
    np.testing.assert_array_equal(again.obsm["X_emb"], emb)
    with pytest.raises(InputError, match="n_comp"):
        run_trajectory_baseline(prepared, tmp_path / "x.h5ad", settings={"n_comp": 10})
    with pytest.raises(InputError, match="var has no column 'modality'"):
        run_trajectory_baseline(prepared, tmp_path / "x.h5ad", modality="rna")


def test_scratch_embedding_is_the_seeded_random_architecture(tmp_path):
    """embed(init="scratch", seed=s) = the model built after seed_all(s), saved and embedded as pretrained."""
    import torch

    import cellmamba
    from cellmamba._util import seed_all
    from cellmamba.models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig
    from cellmamba.trajectory_embeddings import embed_dataset_file
    from cellmamba.vocab import N_SPECIAL

    genes = [f"ENSG{j:011d}" for j in range(40)]
    torch.manual_seed(0)
    config = CellModelConfig(embedding=EmbeddingConfig(kind="binned", vocab_size=N_SPECIAL + 40),
                             backbone=BackboneConfig(arch="bimamba_mamba2", d_model=16, n_layers=1, d_state=8,
                                                     headdim=8, chunk_size=8, backend="torch"),
                             heads={"value": HeadConfig(kind="value_regression")})
    model_dir = CellModel(config).save_pretrained(tmp_path / "m" / "model")
    pd.DataFrame({"feature_id": genes, "feature_name": [f"G{j}" for j in range(40)],
                  "nonzero_median": 1.0}).to_csv(model_dir / "vocabulary.tsv", sep="\t", index=False)
    seed_all(3)
    scratch_dir = CellModel.scratch_like(model_dir).save_pretrained(tmp_path / "s" / "model")
    (scratch_dir / "vocabulary.tsv").write_text((model_dir / "vocabulary.tsv").read_text())
    prepared = tmp_path / "hsmm.h5ad"
    from cellmamba.datasets import prepare_dataset

    prepare_dataset({"task": "trajectory", "reader": "hsmm", "files": {"h5ad": {"path": "h.h5ad"}},
                     "keys": HSMM_KEYS, "x_kind": "normalized"}, {"h5ad": _hsmm_like(tmp_path / "h.h5ad")},
                    prepared, dataset="hsmm")
    adata = ad.read_h5ad(prepared)
    ref = cellmamba.embed(adata.copy(), scratch_dir, max_len=32, progress=False)
    out = embed_dataset_file(prepared, model_dir, tmp_path / "e.h5ad", method="m_scratch", init="scratch", seed=3,
                             max_len=32)
    np.testing.assert_array_equal(out.obsm["X_emb"], ref)
    info = out.uns["cellmamba"]
    assert info["method"] == "m_scratch" and info["seed"] == 3 and info["init"] == "scratch" and info["n_params"] > 0
    assert info["embedding"]["value_source"] == "log1p(normalized)" and info["embedding"]["seed"] == 3
    pretrained = embed_dataset_file(prepared, model_dir, tmp_path / "p.h5ad", method="m", max_len=32)
    assert not np.allclose(pretrained.obsm["X_emb"], ref)
    other = embed_dataset_file(prepared, model_dir, tmp_path / "o.h5ad", method="m_scratch", init="scratch", seed=4,
                               max_len=32)
    assert not np.allclose(other.obsm["X_emb"], ref)
    with pytest.raises(InputError, match="init must be one of"):
        cellmamba.embed(adata, model_dir, init="random", progress=False)


def test_figure_draws_the_scored_cells(tmp_path):
    from cellmamba.plots import trajectory_scatter

    rng = np.random.default_rng(0)
    frames = [pd.DataFrame({"cell": [f"c{i}" for i in range(50)], "method": m, "seed": 0, "dpt": rng.uniform(size=50),
                            "published_pseudotime": np.arange(50.0), "measured_time": np.repeat([0.0, 24.0], 25),
                            "root": np.arange(50) == 2})
              for m in ("scmamba2", "pca", "scmamba2_scratch")]
    data = pd.concat(frames, ignore_index=True)
    summary = trajectory_scatter(data, tmp_path / "fig.png", title="toy")
    assert list(summary["method"]) == ["pca", "scmamba2", "scmamba2_scratch"]
    pca = data[data["method"] == "pca"]
    assert summary.loc[0, "spearman_pseudotime"] == pytest.approx(spearman(pca["published_pseudotime"], pca["dpt"]))
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").stat().st_size > 0
    with pytest.raises(InputError, match="columns"):
        trajectory_scatter(data.drop(columns="dpt"), tmp_path / "x.png", title="toy")


# --------------------------------------------------------------------------- config
def test_config_sub_trees_mirror_the_dataclasses(repo_root):
    from cellmamba.baselines import TrajectoryPcaSettings

    schema = yaml.safe_load((repo_root / "config" / "schema.yaml").read_text())
    traj = schema["properties"]["evaluation"]["properties"]["trajectory"]["properties"]

    def defaults(node):
        return {k: v.get("default") for k, v in node["properties"].items()}

    def fields(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    assert defaults(traj["scoring"]) == fields(TrajectorySettings)
    assert defaults(traj["pca"]) == fields(TrajectoryPcaSettings)
    ref = traj["references"]["patternProperties"]["^[A-Za-z0-9][A-Za-z0-9_]*$"]["properties"]
    assert set(ref) == set(fields(TrajectoryReference))
    for name in ("config.yaml", "paper.yaml"):
        cfg = yaml.safe_load((repo_root / "config" / name).read_text())["evaluation"]["trajectory"]
        assert set(cfg["datasets"]) <= set(cfg["references"]), name
        for entry in cfg["references"].values():
            TrajectoryReference(**entry)


def test_bmmc_cite_rna_path_of_the_paper_config(tmp_path, repo_root):
    """The paper's second dataset: the prepared BMMC CITE-seq file (reader bmmc, both modalities), its
    GEX features only, GEX_pseudotime_order NaN off the trajectories, rooted by cell_type."""
    from cellmamba.baselines import run_trajectory_baseline, trajectory_baseline
    from cellmamba.datasets import prepare_dataset
    from cellmamba.datasets.selection import select_modality

    rng = np.random.default_rng(0)
    n, gex, adt = 60, [f"G{j}" for j in range(12)], ["CD3", "CD4", "CD19"]
    counts = rng.poisson(4.0, (n, len(gex) + len(adt))).astype(np.float32)
    pt = np.where(np.arange(n) < 45, np.arange(n, dtype=float), np.nan)   # 15 cells on no trajectory
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.where(np.arange(n) < 15, "HSC", "Erythroblast")),
                        "batch": pd.Categorical(rng.choice(["s1d1", "s1d2"], n)), "DonorID": 10886,
                        "GEX_pseudotime_order": pt, "ADT_pseudotime_order": np.nan},
                       index=[f"AAAC{i:04d}-1-s1d1" for i in range(n)])
    var = pd.DataFrame({"feature_types": pd.Categorical(["GEX"] * len(gex) + ["ADT"] * len(adt)),
                        "gene_id": [f"ENSG{j:011d}" for j in range(len(gex))] + adt}, index=gex + adt)
    source = ad.AnnData(X=sp.csr_matrix(counts / counts.sum(1, keepdims=True) * 1e4), obs=obs, var=var,
                        layers={"counts": sp.csr_matrix(counts)})
    source.write_h5ad(tmp_path / "cite.h5ad")
    keys = {"label_key": "cell_type", "batch_key": "batch", "feature_type_key": "feature_types",
            "gene_id_key": "gene_id", "donor_key": "DonorID"}
    prepared = tmp_path / "bmmc_cite.h5ad"
    prepare_dataset({"task": "multiomics", "reader": "bmmc", "files": {"h5ad": {"path": "cite.h5ad"}}, "keys": keys,
                     "x_kind": "other"}, {"h5ad": tmp_path / "cite.h5ad"}, prepared, dataset="bmmc_cite")
    ref = yaml.safe_load((repo_root / "config" / "paper.yaml").read_text())["evaluation"]["trajectory"]
    ref = ref["references"]["bmmc_cite"]
    assert ref["modality"] == "rna" and ref["pseudotime_key"] == "GEX_pseudotime_order"
    out = run_trajectory_baseline(prepared, tmp_path / "pca.h5ad", settings={"n_hvg": None, "n_comps": 5},
                                  modality=ref["modality"])
    rna = select_modality(ad.read_h5ad(prepared), "rna")
    assert rna.n_vars == len(gex)
    np.testing.assert_array_equal(out.obsm["X_emb"], trajectory_baseline(rna, seed=0, n_hvg=None, n_comps=5))
    metrics, per_cell = score_trajectory_files(prepared, [tmp_path / "pca.h5ad"], reference=ref)
    assert (metrics["n_cells"] == 45).all() and len(per_cell) == 45
    values = metrics.set_index("metric")["value"]
    assert 0 <= values["trajectory_conservation"] <= 1 and math.isnan(values["dpt_spearman_time"])
    root = per_cell.loc[per_cell["root"], "cell"].iloc[0]
    assert ad.read_h5ad(prepared).obs.loc[root, "cell_type"] == "HSC"   # the group of lowest mean pseudotime

"""cellmamba.plots: every figure is written (PNG + PDF) and the returned data equal an
independent computation from the inputs."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellmamba import plots
from cellmamba.datasets.gears_split import SUBGROUPS, PerturbationSplit, write_split
from cellmamba.errors import InputError
from cellmamba.io import write_paired_embedding, write_profiles
from cellmamba.metrics import metrics_frame, score_perturbation_files, write_csv


def _written(out):
    for suffix in (".png", ".pdf"):
        path = out.with_suffix(suffix)
        assert path.is_file() and path.stat().st_size > 1000, path
    assert not list(out.parent.glob(".*tmp*")), "temporary files left behind"


# --- style ----------------------------------------------------------------------------------
def test_method_colors_are_fixed_and_grouped_by_family():
    assert plots.method_color("scmamba2") == plots.method_color("scmamba2")
    greys = {plots.method_color(m) for m in ("logreg", "pca", "harmony", "no_change", "pca_cca")}
    for c in greys:   # baselines are grey: equal R, G, B
        assert c[1:3] == c[3:5] == c[5:7], c
    mamba = {plots.method_color(m) for m in ("scmamba2", "genemamba", "scmamba_bimamba")}
    trans = {plots.method_color(m) for m in ("scmamba2_transformer", "genemamba_transformer")}
    assert not (mamba & trans) and not (mamba & greys) and not (trans & greys)
    assert plots.method_color("scmamba2") != plots.method_color("genemamba")
    assert plots.method_order(["scmamba2_transformer", "genemamba", "pca", "scmamba2", "genemamba_transformer"]) == \
        ["pca", "genemamba", "genemamba_transformer", "scmamba2", "scmamba2_transformer"]


def test_a_scratch_control_sits_beside_its_model_in_its_colour_made_lighter():
    given = ["genemamba_transformer_scratch", "scmamba2_scratch", "logreg", "genemamba_scratch", "genemamba",
             "genemamba_transformer", "scmamba2"]
    assert plots.method_order(given) == ["logreg", "genemamba", "genemamba_scratch", "genemamba_transformer",
                                         "genemamba_transformer_scratch", "scmamba2", "scmamba2_scratch"]
    assert plots.method_order(["scmamba2_scratch", "pca"]) == ["pca", "scmamba2_scratch"]  # a control alone
    assert plots.theme.method_kind("genemamba_transformer_scratch") == "transformer"
    # "#0072B2" halfway to white, channel by channel, halves up: 127.5 -> 128, 184.5 -> 185, 216.5 -> 217
    assert plots.method_color("scmamba2") == "#0072B2"
    assert plots.method_color("scmamba2_scratch") == "#80B9D9"


# --- 1. metric bars -------------------------------------------------------------------------
def _runs(tmp_path, task, values, *, extra=None):
    paths = []
    for method, per_seed in values.items():
        for seed, scores in enumerate(per_seed):
            frame = metrics_frame(scores, task=task, dataset="toy", method=method, seed=seed,
                                  extra={"simulated": True, **(extra or {})})
            path = tmp_path / task / method / f"seed{seed}" / "metrics.csv"
            write_csv(frame, path)
            paths.append(path)
    return paths


def test_metric_bars_are_means_over_seeds_with_sd(tmp_path):
    acc = {"logreg": [0.8, 0.7, 0.9], "scmamba2": [0.5, 0.6, 0.4]}
    values = {m: [{"accuracy": a, "f1_macro": a / 2, "precision_macro": 0.1} for a in v] for m, v in acc.items()}
    out = tmp_path / "fig" / "bars.png"
    data = plots.metric_bars(_runs(tmp_path, "annotation", values), out, task="annotation")
    _written(out)
    assert set(data["metric"]) == {"accuracy", "f1_macro"}   # only the task's headline metrics
    for method, v in acc.items():
        row = data[(data["method"] == method) & (data["metric"] == "accuracy")].iloc[0]
        assert row["mean"] == pytest.approx(sum(v) / 3)
        hand_sd = (sum((x - sum(v) / 3) ** 2 for x in v) / 2) ** 0.5   # ddof 1
        assert row["sd"] == pytest.approx(hand_sd)
        assert row["n_seeds"] == 3 and sorted(row["values"]) == sorted(v)
    best = data[data["best"]]
    assert set(zip(best["metric"], best["method"])) == {("accuracy", "logreg"), ("f1_macro", "logreg")}


def test_metric_bars_lower_is_better_and_panels(tmp_path):
    values = {"pca_cca": [{"foscttm": 0.3, "ari": 0.9}], "scmamba": [{"foscttm": 0.1, "ari": 0.5}]}
    data = plots.metric_bars(_runs(tmp_path, "multiomics", values), tmp_path / "mo.png", task="multiomics")
    best = data[data["best"]].set_index("metric")["method"]
    assert best["foscttm"] == "scmamba" and best["ari"] == "pca_cca"
    assert data["sd"].isna().all()   # one seed: no spread
    runs = _runs(tmp_path, "perturbation", {"additive": [{"pearson_delta": 0.2}]}, extra={"subgroup": "all"}) + \
        _runs(tmp_path / "b", "perturbation", {"additive": [{"pearson_delta": 0.4}]}, extra={"subgroup": "combo_seen1"})
    data = plots.metric_bars(runs, tmp_path / "p.png", task="perturbation")
    assert dict(zip(data["panel"], data["mean"])) == {"all": 0.2, "combo_seen1": 0.4}


def test_metric_bars_without_rows_of_the_task_is_an_error(tmp_path):
    runs = _runs(tmp_path, "annotation", {"logreg": [{"accuracy": 0.5}]})
    with pytest.raises(InputError, match="no rows of task 'integration'"):
        plots.metric_bars(runs, tmp_path / "x.png", task="integration")


# --- 2. UMAPs -------------------------------------------------------------------------------
def _obs(n):
    return pd.DataFrame({"cell_type": [f"type {i % 3}" for i in range(n)], "batch": [f"b{i % 2}" for i in range(n)]},
                        index=[f"c{i}" for i in range(n)])


def _first_two(emb, seed):
    return np.asarray(emb, np.float64)[:, :2] * 10


def test_embedding_umaps_integration_and_paired(tmp_path, monkeypatch):
    # scanpy's UMAP itself (numba compilation: ~20 s) runs in the workflow, not here; a stand-in
    # layout lets the test check which points are drawn where
    monkeypatch.setattr("cellmamba.plots.embedding._umap", _first_two)
    rng = np.random.default_rng(0)
    n = 40
    obs = _obs(n)
    files = {}
    for method in ("pca", "scmamba2"):
        a = ad.AnnData(obs=obs.copy())
        a.obsm["X_emb"] = rng.normal(size=(n, 5)).astype(np.float32) + np.arange(n)[:, None] % 3
        files[method] = tmp_path / method / "seed0" / "embedding.h5ad"
        files[method].parent.mkdir(parents=True)
        a.write_h5ad(files[method])
    out = tmp_path / "umap.png"
    data = plots.embedding_umaps(list(files.values()), out, title="toy", simulated=True)
    _written(out)
    assert list(data["method"].unique()) == ["pca", "scmamba2"]   # method from the path
    block = data[data["method"] == "pca"]
    assert block["cell"].tolist() == obs.index.tolist()
    assert block["cell_type"].tolist() == obs["cell_type"].tolist() and block["batch"].tolist() == obs["batch"].tolist()
    np.testing.assert_allclose(block[["umap1", "umap2"]].to_numpy(),
                               ad.read_h5ad(files["pca"]).obsm["X_emb"][:, :2].astype(np.float64) * 10)

    paired = tmp_path / "mo.h5ad"
    emb = {"rna": rng.normal(size=(n, 4)).astype(np.float32), "atac": rng.normal(size=(n, 4)).astype(np.float32)}
    write_paired_embedding(obs, emb, paired, info={"method": "scmamba"})
    data = plots.embedding_umaps({"scmamba": paired}, tmp_path / "mo.png")
    _written(tmp_path / "mo.png")
    assert len(data) == 2 * n and "batch" not in data
    np.testing.assert_allclose(data[["umap1", "umap2"]].to_numpy(), np.vstack([emb["rna"], emb["atac"]])[:, :2] * 10)
    assert data["modality"].tolist() == ["rna"] * n + ["atac"] * n
    assert data["cell_type"].tolist() == obs["cell_type"].tolist() * 2


def test_embedding_umaps_missing_colour_is_an_error(tmp_path):
    a = ad.AnnData(obs=_obs(20).drop(columns="batch"))
    a.obsm["X_emb"] = np.zeros((20, 3), np.float32)
    a.write_h5ad(tmp_path / "e.h5ad")
    with pytest.raises(InputError, match="lacks colour columns \\['batch'\\]"):
        plots.embedding_umaps({"pca": tmp_path / "e.h5ad"}, tmp_path / "u.png")


# --- 3. perturbation scatter ----------------------------------------------------------------
def test_perturbation_scatter_deltas_and_pearson(tmp_path):
    rng = np.random.default_rng(1)
    genes = [f"G{i}" for i in range(30)]
    conds = ["ctrl"] * 6 + ["A+ctrl"] * 4 + ["B+ctrl"] * 4 + ["A+B"] * 4
    X = rng.poisson(2.0, size=(len(conds), len(genes))).astype(np.float32)
    names = {"ctrl": "ctrl_1+1", "A+ctrl": "A_1+1", "B+ctrl": "B_1+1", "A+B": "A+B_1+1"}
    de = {names[c]: np.array(rng.permutation(genes)[:20]) for c in ("A+ctrl", "B+ctrl", "A+B")}
    data_ad = ad.AnnData(X=X, obs=pd.DataFrame({"condition": conds, "condition_name": [names[c] for c in conds]},
                                               index=[f"c{i}" for i in range(len(conds))]),
                         var=pd.DataFrame(index=genes))
    data_ad.uns["rank_genes_groups_cov_all"] = de
    data_ad.uns["cellmamba"] = {"simulated": True}
    data_ad.write_h5ad(tmp_path / "d.h5ad")
    sub = {g: [] for g in SUBGROUPS}
    sub["unseen_single"], sub["combo_seen1"] = ["B+ctrl"], ["A+B"]
    write_split(PerturbationSplit(train=["A+ctrl", "ctrl"], val=[], test=["B+ctrl", "A+B"], test_subgroup=sub,
                                  val_subgroup={g: [] for g in SUBGROUPS}, seed=1, settings={}), tmp_path / "s.json")
    pred = pd.DataFrame(rng.normal(2.0, 1.0, size=(2, len(genes))), index=["ctrl+B", "B+A"], columns=genes)
    write_profiles(pred, tmp_path / "m" / "seed0" / "predictions.h5ad")
    out = tmp_path / "scatter.png"
    deltas = tmp_path / "m" / "seed0" / "deltas.h5ad"
    score_perturbation_files(tmp_path / "d.h5ad", tmp_path / "s.json", tmp_path / "m" / "seed0" / "predictions.h5ad",
                             deltas=deltas)
    data = plots.perturbation_scatter([deltas], out)
    _written(out)
    ctrl = X[:6].mean(axis=0)
    assert sorted(data["condition"].unique()) == ["A+B", "B+ctrl"]   # one per subgroup
    block = data[data["condition"] == "A+B"]
    measured = X[np.array(conds) == "A+B"].mean(axis=0) - ctrl
    predicted = pred.loc["B+A"].to_numpy() - ctrl
    np.testing.assert_allclose(block["measured"], measured, atol=1e-6)
    np.testing.assert_allclose(block["predicted"], predicted, atol=1e-6)   # profiles are stored as float32
    assert set(block.loc[block["de"], "gene"]) == set(de["A+B_1+1"])
    assert block["subgroup"].iloc[0] == "combo_seen1"
    assert block["pearson_delta"].iloc[0] == pytest.approx(np.corrcoef(measured, predicted)[0, 1])
    idx = [genes.index(g) for g in de["A+B_1+1"]]
    assert block["pearson_delta_de20"].iloc[0] == pytest.approx(np.corrcoef(measured[idx], predicted[idx])[0, 1])
    with pytest.raises(InputError, match="n_conditions"):
        plots.perturbation_scatter({"m": tmp_path / "x.h5ad"}, out, n_conditions=0)


# --- 4. confusion ---------------------------------------------------------------------------
def test_confusion_rows_are_normalised(tmp_path):
    a = pd.DataFrame([[5, 1, 0], [2, 2, 0], [0, 0, 0]], index=["B cell", "T cell", "NK"],
                     columns=["B cell", "T cell", "NK"])
    b = pd.DataFrame([[6], [4]], index=["B cell", "T cell"], columns=["T cell"])
    paths = []
    for name, frame in (("logreg", a), ("scmamba2", b)):
        path = tmp_path / name / "seed0" / "confusion.csv"
        path.parent.mkdir(parents=True)
        frame.rename_axis("true").to_csv(path)
        paths.append(path)
    out = tmp_path / "conf.png"
    data = plots.confusion_heatmaps(paths, out, title="toy")
    _written(out)
    frac = data.pivot_table(index=["method", "true"], columns="predicted", values="fraction", dropna=False)
    sums = data.groupby(["method", "true"])["fraction"].sum(min_count=1)
    assert sums[("logreg", "B cell")] == pytest.approx(1) and sums[("scmamba2", "T cell")] == pytest.approx(1)
    assert frac.loc[("logreg", "B cell"), "T cell"] == pytest.approx(1 / 6)
    assert frac.loc[("logreg", "NK")].isna().all()          # no query cell of that class
    row = data[(data["method"] == "scmamba2") & (data["true"] == "B cell")].set_index("predicted")
    assert row.loc["T cell", "count"] == 6 and row.loc["B cell", "count"] == 0   # aligned to the union of labels
    bad = tmp_path / "bad.csv"
    bad.write_text("true,B cell\nB cell,many\n")
    with pytest.raises(InputError, match="confusion matrix"):
        plots.confusion_heatmaps({"x": bad}, tmp_path / "bad.png")


# --- 5. loss curves -------------------------------------------------------------------------
def test_loss_curves(tmp_path):
    paths = []
    for model, loss in (("scmamba2", [3.0, 2.0, 1.5]), ("scmamba2_transformer", [3.1, 2.5, 2.0]),
                        ("genemamba", [9.0, 8.0, 7.0]), ("genemamba_u", [9.5, 8.5, 7.5])):
        path = tmp_path / model / "metrics.csv"
        path.parent.mkdir()
        pd.DataFrame({"step": [5, 10, 15], "loss": loss, "lr": 0.1}).to_csv(path, index=False)
        paths.append(path)
    out = tmp_path / "loss.png"
    data = plots.loss_curves(paths, out)
    _written(out)
    assert data.groupby("recipe")["model"].unique().map(sorted).to_dict() == {
        "genemamba": ["genemamba", "genemamba_u"], "scmamba2": ["scmamba2", "scmamba2_transformer"]}
    assert data[data["model"] == "scmamba2_transformer"]["loss"].tolist() == [3.1, 2.5, 2.0]
    pd.DataFrame({"step": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="lack columns \\['loss'\\]"):
        plots.loss_curves({"x": tmp_path / "bad.csv"}, tmp_path / "b.png")


def test_loss_curves_leave_out_runs_without_rows_and_name_missing_files(tmp_path, caplog):
    good = tmp_path / "scmamba2" / "metrics.csv"
    good.parent.mkdir()
    pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.0]}).to_csv(good, index=False)
    empty, header = tmp_path / "genemamba" / "metrics.csv", tmp_path / "genemamba_transformer" / "metrics.csv"
    for path, text in ((empty, ""), (header, "step,epoch,loss\n")):  # a failed run, one that logged nothing
        path.parent.mkdir()
        path.write_text(text)
    with caplog.at_level("WARNING", logger="cellmamba.plots"):
        data = plots.loss_curves([good, empty, header], tmp_path / "loss.png")
    _written(tmp_path / "loss.png")
    assert data["model"].unique().tolist() == ["scmamba2"] and data["loss"].tolist() == [3.0, 2.0]
    assert str(empty) in caplog.text and str(header) in caplog.text
    with pytest.raises(InputError, match="no pretraining metrics file has training rows"):
        plots.loss_curves([empty, header], tmp_path / "none.png")
    with pytest.raises(InputError, match=r"missing/metrics.csv: no such file"):
        plots.loss_curves([good, tmp_path / "missing" / "metrics.csv"], tmp_path / "m.png")


def test_loss_curve_of_one_run_is_a_png(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    path.parent.mkdir()
    pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "lr": 0.1}).to_csv(path, index=False)
    out = plots.loss_curve(path, tmp_path / "run" / "loss_curve.png")
    assert out == tmp_path / "run" / "loss_curve.png" and out.stat().st_size > 1000
    assert not out.with_suffix(".pdf").exists()   # one PNG, as the training loop writes
    assert not list(out.parent.glob(".*tmp*")), "temporary files left behind"
    with pytest.raises(InputError, match="no pretraining metrics file has training rows"):
        (tmp_path / "empty.csv").write_text("")
        plots.loss_curve(tmp_path / "empty.csv", tmp_path / "e.png")


# --- 6. throughput --------------------------------------------------------------------------
def test_throughput_and_task_throughput(tmp_path):
    rows = []
    for model, params in (("bimamba_mamba2", 10e6), ("transformer", 10e6)):
        for mode in ("train", "forward"):
            for L in (1024, 4096, 16384):
                rows.append({"model": model, "mode": mode, "L": L, "batch": 8, "params": params,
                             "tokens_per_s": 1e6 / (L if model == "transformer" else 1000), "peak_gib": L / 1000,
                             "status": "ok", "device": "GPU X", "date": "2026-01-01"})
    rows.append({**rows[-1], "L": 65536, "tokens_per_s": np.nan, "peak_gib": np.nan, "status": "oom"})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    data = plots.throughput(tmp_path / "t.csv", tmp_path / "t.png")
    _written(tmp_path / "t.png")
    assert len(data) == 12 and (data["L"] < 65536).all()   # the OOM row is annotated, not plotted as a point
    tasks = pd.DataFrame({"device": "GPU X", "date": "2026-01-01", "task": ["perturbation"] * 2 + ["multiomics"],
                          "arch": ["bimamba_mamba2", "transformer", "mamba2"], "phase": "train",
                          "tokens_per_s": [1e6, 2e6, 3e6], "peak_gib": [4.0, 5.0, 6.0]})
    tasks.to_csv(tmp_path / "k.csv", index=False)
    data = plots.task_throughput(tmp_path / "k.csv", tmp_path / "k.png")
    _written(tmp_path / "k.png")
    assert data["tokens_per_s"].tolist() == [1e6, 2e6, 3e6]
    assert data["label"].tolist() == ["perturbation / train"] * 2 + ["multiomics / train"]
    tasks.drop(columns="peak_gib").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="peak_gib"):
        plots.task_throughput(tmp_path / "bad.csv", tmp_path / "bad.png")


def test_scalability_reads_gpu_memory_where_measured_else_host(tmp_path):
    rows = []
    for device, gpu in (("CPU (2 cores)", None), ("GPU X", 3.0)):
        for n in (1000, 3000):
            for method, stage in (("scmamba", "train+embed"), ("scmamba", "embed"), ("pca_cca", "fit")):
                rows.append({"method": method, "n_cells": n, "stage": stage, "wall_s": n / 100, "peak_host_gib": 1.5,
                             "peak_gpu_gib": gpu, "device": device, "date": "2026-01-01", "epochs": 1})
    pd.DataFrame(rows).to_csv(tmp_path / "s.csv", index=False)
    data = plots.scalability(tmp_path / "s.csv", tmp_path / "s.png")
    _written(tmp_path / "s.png")
    assert len(data) == 12
    assert data.groupby("device")["memory_gib"].unique().map(list).to_dict() == {"CPU (2 cores)": [1.5], "GPU X": [3.0]}
    assert set(data.loc[data["device"] == "GPU X", "memory"]) == {"GPU"}
    pd.DataFrame(rows).assign(stage="warmup").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"unknown stage\(s\) \['warmup'\]"):
        plots.scalability(tmp_path / "bad.csv", tmp_path / "bad.png")


# --- tables ---------------------------------------------------------------------------------
def test_table_html(tmp_path):
    from cellmamba.metrics import summarize, write_table
    from cellmamba.report import table_html

    frame = pd.concat([metrics_frame({"accuracy": a}, task="annotation", dataset="toy", method=m, seed=0)
                       for m, a in (("logreg", 0.9), ("scmamba2", 0.4))])
    write_table(summarize(frame), tmp_path / "t.csv", tmp_path / "t.md", title="Annotation <test>")
    text = table_html(tmp_path / "t.md", tmp_path / "t.html")
    assert (tmp_path / "t.html").read_text() == text
    assert "<h1>Annotation &lt;test&gt;</h1>" in text
    assert "<td><b>0.900</b></td>" in text and "<td>0.400</td>" in text
    assert text.count("<tr>") == 3   # header + 2 methods
    (tmp_path / "x.md").write_text("no heading\n")
    with pytest.raises(InputError, match="expected a benchmark table"):
        table_html(tmp_path / "x.md", tmp_path / "x.html")

"""Classification, perturbation, multi-omics and table metrics against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellmamba.errors import InputError
from cellmamba.metrics import (confusion, foscttm, foscttm_per_cell, label_transfer_accuracy, metrics_frame,
                               mixing_entropy, pearson, perturbation_scores, query_only_classes,
                               read_metrics, reverse_perturbation_scores, score_annotation,
                               score_multiomics, score_predictions, summarize, summarize_perturbation,
                               topk_accuracy, write_csv, write_table)
from cellmamba.metrics.tables import higher_is_better, render_markdown

# ---------------------------------------------------------------- classification
# query truth a a b b c, predictions a b b b a; reference has a, b (and d, never seen in the query)
# per class: a: TP1 FP1 FN1 -> P .5 R .5 F1 .5 ; b: TP2 FP1 FN0 -> P 2/3 R 1 F1 .8 ; c: TP0 FP0 FN1 -> 0 0 0
Y_TRUE = ["a", "a", "b", "b", "c"]
Y_PRED = ["a", "b", "b", "b", "a"]


@pytest.mark.parametrize("reference", [["a", "b", "a"], ["a", "b", "d"]])
def test_score_annotation_hand_computed(reference):
    s = score_annotation(Y_TRUE, Y_PRED, reference_labels=reference)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert s["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["f1_macro"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert s["f1_micro"] == pytest.approx(3 / 5)
    # macro set = the query's true classes: a, b, c (reference-only d left out); here it is also the union
    assert s["n_classes_macro"] == 3 and s["f1_macro_union"] == pytest.approx(s["f1_macro"])
    assert s["n_query_only_classes"] == 1 and s["query_only_cell_fraction"] == pytest.approx(1 / 5)
    assert "c" in s.notes["n_query_only_classes"]


def test_macro_averages_keep_the_query_classes_whatever_a_method_predicts():
    """Predicting a class the query lacks (d) adds no term to the macro averages; scGPT's union
    average (f1_macro_union) gains a zero term and a fourth class. By hand, predictions a b b b d:
    a: TP1 FP0 FN1 -> P 1 R .5 F1 2/3 ; b: TP2 FP1 FN0 -> P 2/3 R 1 F1 .8 ; c: 0 ; d: 0 (union only)."""
    s = score_annotation(Y_TRUE, ["a", "b", "b", "b", "d"], reference_labels=["a", "b", "d"])
    assert s["n_classes_macro"] == 3
    assert s["precision_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert s["f1_macro"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert s["f1_macro_union"] == pytest.approx((2 / 3 + 0.8 + 0 + 0) / 4)
    assert s["accuracy"] == pytest.approx(3 / 5) and s["f1_micro"] == pytest.approx(3 / 5)
    # two methods on the same query: the same class set, whatever each predicts
    other = score_annotation(Y_TRUE, ["a"] * 5, reference_labels=["a", "b", "d"])
    assert other["n_classes_macro"] == s["n_classes_macro"]
    assert other["f1_macro"] == pytest.approx((2 * 0.4 / 1.4 + 0 + 0) / 3)  # a: P .4 R 1


def test_query_only_classes_and_confusion():
    assert query_only_classes(Y_TRUE, ["a", "b"]) == ["c"]
    assert query_only_classes(["a"], ["a", "b"]) == []
    cm = confusion(Y_TRUE, Y_PRED)
    expected = pd.DataFrame([[1, 1, 0], [0, 2, 0], [1, 0, 0]], index=list("abc"), columns=list("abc"))
    np.testing.assert_array_equal(cm.to_numpy(), expected.to_numpy())
    assert list(cm.index) == list("abc") and cm.index.name == "true" and cm.columns.name == "predicted"


def test_score_predictions_and_errors():
    frame = pd.DataFrame({"cell": [f"c{i}" for i in range(8)],
                          "split": ["reference"] * 3 + ["query"] * 5,
                          "cell_type": ["a", "b", "a", *Y_TRUE],
                          "predicted": ["", "", "", *Y_PRED]})
    scores, cm = score_predictions(frame)
    assert scores["accuracy"] == pytest.approx(0.6) and int(cm.to_numpy().sum()) == 5
    frame.loc[7, "predicted"] = ""
    with pytest.raises(InputError, match="predicted"):
        score_predictions(frame)
    with pytest.raises(InputError, match="split"):
        score_predictions(frame.assign(split="train"))
    with pytest.raises(InputError, match="5 labels"):
        score_annotation(Y_TRUE, Y_PRED[:4], reference_labels=["a"])


# ---------------------------------------------------------------- perturbation
def test_perturbation_hand_computed():
    genes = ["g1", "g2", "g3", "g4"]
    ctrl = pd.Series([1.0, 1.0, 1.0, 1.0], index=genes)
    truth = pd.DataFrame([[2.0, 3.0, 1.0, 0.0]], index=["X"], columns=genes)   # delta 1 2 0 -1
    pred = pd.DataFrame([[1.5, 2.0, 1.0, 1.0]], index=["X"], columns=genes)    # delta .5 1 0 0
    out = perturbation_scores(pred, truth, ctrl, de_genes={"X": ["g2", "g4", "g1"]}, n_de=2)
    # centred deltas t = (.5, 1.5, -.5, -1.5), p = (.125, .625, -.375, -.375):
    # sum tp = 1.75, sum t^2 = 5, sum p^2 = .6875
    assert out.loc["X", "pearson_delta"] == pytest.approx(1.75 / np.sqrt(5 * 0.6875))
    assert out.loc["X", "mse"] == pytest.approx((0.25 + 1 + 0 + 1) / 4)
    # DE genes g2, g4: deltas p = (1, 0), t = (2, -1): two points -> r = 1; squared errors 1, 1
    assert out.loc["X", "pearson_delta_de2"] == pytest.approx(1.0)
    assert out.loc["X", "mse_de2"] == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # a constant predicted change scores 0 (GEARS' NaN -> 0); a constant measured change stays NaN
    flat = perturbation_scores(pd.DataFrame([[1.0] * 4, [2.0, 3.0, 1.0, 0.0]], index=["X", "Y"], columns=genes),
                               pd.DataFrame([[2.0, 3.0, 1.0, 0.0], [1.0] * 4], index=["X", "Y"], columns=genes), ctrl)
    assert flat.loc["X", "pearson_delta"] == 0.0 and np.isnan(flat.loc["Y", "pearson_delta"])


def test_summarize_perturbation_groups():
    per = pd.DataFrame({"pearson_delta": [0.2, 0.4, np.nan], "mse": [1.0, 3.0, 5.0]}, index=["A", "B", "C"])
    s = summarize_perturbation(per, groups={"A": "unseen_single", "B": "combo_seen1", "C": "combo_seen1"})
    assert s["pearson_delta"] == pytest.approx(0.3) and s["mse"] == pytest.approx(3.0)
    assert s["pearson_delta_unseen_single"] == pytest.approx(0.2)
    assert s["pearson_delta_combo_seen1"] == pytest.approx(0.4) and s["mse_combo_seen1"] == pytest.approx(4.0)
    assert "1 of 3" in s.notes["pearson_delta"]


def test_perturbation_input_errors():
    genes = ["g1", "g2"]
    truth = pd.DataFrame([[1.0, 2.0]], index=["X"], columns=genes)
    with pytest.raises(InputError, match="conditions"):
        perturbation_scores(truth.rename(index={"X": "Y"}), truth, np.zeros(2))
    with pytest.raises(InputError, match="not measured"):
        perturbation_scores(truth, truth, np.zeros(2), de_genes={"X": ["g9"]})


def test_topk_accuracy_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5],    # truth 0 ranks first
                       [0.2, 0.2, 0.1],    # truth 1 ties with 0: rank 1 (ties count against it)
                       [0.1, 0.3, 0.2]])   # truth 0 ranks last
    truth = [0, 1, 0]
    assert topk_accuracy(scores, truth, k=1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, truth, k=2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, truth, k=3) == pytest.approx(1.0)
    s = reverse_perturbation_scores(scores, ["A", "B", "A"], ks=(1, 2), candidates=["A", "B", "C"])
    assert s == pytest.approx({"top1_accuracy": 1 / 3, "top2_accuracy": 2 / 3})
    with pytest.raises(InputError, match="candidates"):
        topk_accuracy(scores, ["Z", "A", "A"], candidates=["A", "B", "C"])


# ---------------------------------------------------------------- multi-omics
def _foscttm_brute(x, y):
    n = len(x)
    d = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    fr = []
    for i in range(n):
        c1 = sum(d(x[i], y[j]) < d(x[i], y[i]) for j in range(n) if j != i)
        c2 = sum(d(y[i], x[j]) < d(y[i], x[i]) for j in range(n) if j != i)
        fr.append((c1 / (n - 1) + c2 / (n - 1)) / 2)
    return np.array(fr)


def test_foscttm_hand_computed_three_cells():
    x = np.array([[0.0], [1.0], [3.0]])
    y = np.array([[1.2], [0.5], [3.0]])
    # x0: y1 (0.5) closer than y0 (1.2) -> 1/2; x1: y0 (0.2) closer than y1 (0.5) -> 1/2; x2: 0
    # y0: x1 (0.2) closer than x0 (1.2) -> 1/2; y1: x0 ties x1 at 0.5 (not closer) -> 0; y2: 0
    np.testing.assert_allclose(foscttm_per_cell(x, y), [0.5, 0.25, 0.0])
    assert foscttm(x, y) == pytest.approx(0.25)


def test_foscttm_identical_is_zero_and_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 4))
    assert foscttm(x, x.copy()) == 0.0
    y = x + rng.normal(scale=0.8, size=x.shape)
    np.testing.assert_allclose(foscttm_per_cell(x, y, block_size=7), _foscttm_brute(x, y))
    np.testing.assert_allclose(foscttm_per_cell(y, x, block_size=5), _foscttm_brute(y, x))
    with pytest.raises(InputError, match="same shape"):
        foscttm(x, y[:5])


def test_mixing_entropy_hand_computed():
    # line 0(A) 1(B) 10(A) 11(B), k=2: cell 0 sees 1(B), 10(A) -> H=1; cell 1 sees 0(A), 10(A) -> 0;
    # cell 10 sees 11(B), 1(B) -> 0; cell 11 sees 10(A), 1(B) -> 1; mean 0.5
    emb = np.array([[0.0], [1.0], [10.0], [11.0]])
    assert mixing_entropy(emb, ["A", "B", "A", "B"], k=2) == pytest.approx(0.5)
    separated = np.array([[0.0], [1.0], [2.0], [100.0], [101.0], [102.0]])
    assert mixing_entropy(separated, list("AAABBB"), k=2) == 0.0
    with pytest.raises(InputError, match="2 modalities"):
        mixing_entropy(separated, list("AAAAAA"))


def test_label_transfer_hand_computed():
    src = np.array([[0.0], [1.0], [10.0], [11.0]])
    tgt = np.array([[0.5], [10.5], [5.4]])   # 5.4 is nearer 1 (a) than 10 (b): wrong
    acc = label_transfer_accuracy(src, tgt, source_labels=list("aabb"), target_labels=list("abb"), k=1)
    assert acc == pytest.approx(2 / 3)
    s = score_multiomics(src, src + 0.01, labels=list("aabb"), mixing_k=1, transfer_k=1)
    assert s["foscttm"] == 0.0 and s["label_transfer"] == 1.0
    # mixing, k=1 over stacked [x; x+0.01]: every nearest neighbour is the partner -> 1 modality seen -> 0
    assert s["omics_mixing_entropy"] == 0.0


# ---------------------------------------------------------------- tables
def _runs():
    frames = []
    for method, vals, simulated in (("cellmamba", (0.8, 0.9), False), ("pca", (0.7,), False)):
        for seed, v in enumerate(vals):
            frames.append(metrics_frame({"accuracy": v, "foscttm": 0.1 if method == "pca" else 0.2},
                                        task="annotation", dataset="ms", method=method, seed=seed,
                                        extra={"variant": "hvg", "simulated": simulated, "n_params": 1234567}))
    return frames


def test_summarize_mean_std_nseeds():
    summary = summarize(_runs())
    row = summary[(summary.method == "cellmamba") & (summary.metric == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(0.85)
    assert row["std"] == pytest.approx(np.sqrt(2 * 0.05 ** 2 / 1))    # ddof=1
    assert row["n_seeds"] == 2
    one = summary[(summary.method == "pca") & (summary.metric == "accuracy")].iloc[0]
    assert one["mean"] == pytest.approx(0.7) and np.isnan(one["std"]) and one["n_seeds"] == 1
    frames = _runs()
    with pytest.raises(InputError, match="repeat"):
        summarize(frames + frames[:1])
    nan_run = metrics_frame({"accuracy": float("nan")}, task="annotation", dataset="ms", method="pca", seed=5,
                            extra={"variant": "hvg", "simulated": False, "n_params": 1234567})
    again = summarize(frames + [nan_run])
    assert again[(again.method == "pca") & (again.metric == "accuracy")]["n_seeds"].item() == 1


def test_write_table_markdown(tmp_path):
    frames = _runs()
    frames.append(metrics_frame({"accuracy": 0.5}, task="annotation", dataset="toy", method="pca", seed=0,
                                extra={"variant": "hvg", "simulated": True, "n_params": 10}))
    for i, f in enumerate(frames):    # through CSV, as the workflow does
        write_csv(f, tmp_path / f"run{i}.csv")
    summary = summarize(read_metrics(sorted(tmp_path.glob("run*.csv"))))
    write_table(summary, tmp_path / "t.csv", tmp_path / "t.md", title="Annotation")
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("# Annotation")
    assert "| cellmamba | hvg | 1,234,567 | 2 | **0.850 ± 0.071** | 0.200 ± 0.000 |" in md
    assert "| pca | hvg | 1,234,567 | 1 | 0.700 | **0.100** |" in md     # FOSCTTM: lower is better
    assert "pca (simulated)" in md
    back = pd.read_csv(tmp_path / "t.csv")
    assert {"mean", "std", "n_seeds", "metric", "method", "dataset"} <= set(back.columns)
    assert higher_is_better("mse_de20") is False and higher_is_better("f1_macro") is True
    assert higher_is_better("n_query_only_classes") is None


def test_markdown_ties_and_notes():
    frames = [metrics_frame({"ari": 0.5}, task="integration", dataset="d", method=m, seed=0) for m in "ab"]
    from cellmamba.metrics import Scores
    s = Scores({"ilisi": float("nan")}, notes={"ilisi": "LISI disabled"})
    frames.append(metrics_frame(s, task="integration", dataset="d", method="a", seed=0))
    md = render_markdown(summarize(frames), title="t")
    assert md.count("**0.500**") == 2 and "n/a" in md and "ilisi: LISI disabled (a)" in md


def test_parameter_counts_become_table_columns_of_model_rows(tmp_path):
    """A model run's run.json parameter counts are flag columns of its table row (both the Mamba
    model and its Transformer peer print theirs); baselines, without a run.json, keep their rows."""
    import json

    from cellmamba.metrics import summarize
    from cellmamba.metrics.tables import parameter_flags

    runs = {"scmamba2": {"pretrained_params": 1200, "pretrained_params_backbone": 1000},
            "scmamba2_transformer": {"pretrained_params": 1250, "pretrained_params_backbone": 1010}}
    frames = []
    for method, counts in runs.items():
        (tmp_path / method).mkdir()
        (tmp_path / method / "run.json").write_text(json.dumps({"created": "x", "config": {"model": "m", **counts}}))
        flags = parameter_flags(tmp_path / method)
        assert flags == {"n_params": counts["pretrained_params"], "n_params_backbone": counts["pretrained_params_backbone"]}
        frames += [metrics_frame({"accuracy": 0.5 + s / 10}, task="annotation", dataset="d", method=method, seed=s,
                                 extra=flags) for s in (0, 1)]
    frames += [metrics_frame({"accuracy": 0.7}, task="annotation", dataset="d", method="logreg", seed=0,
                             extra=parameter_flags(None))]
    towers = tmp_path / "towers"
    towers.mkdir()
    (towers / "run.json").write_text(json.dumps({"config": {"n_params": {"rna": 10, "atac": 15}}}))
    assert parameter_flags(towers) == {"n_params": 25}
    table = summarize(pd.concat(frames, ignore_index=True))
    rows = table.set_index("method")
    assert set(rows.index) == {"scmamba2", "scmamba2_transformer", "logreg"}
    assert rows.loc["scmamba2_transformer", "n_params_backbone"] in (1010, "1010")
    assert rows.loc["scmamba2", "mean"] == pytest.approx(0.55)
    md = render_markdown(table, title="annotation")
    assert "n_params" in md and "1,010" in md
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(InputError, match="no parameter counts"):
        parameter_flags(tmp_path / "bad")

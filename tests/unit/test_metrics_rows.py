"""metrics.rows (the row format) and the direction table tables.py composes from each metric
module's METRICS declaration."""
import pytest

from cellmamba.metrics import metrics_frame, read_metrics, write_csv
from cellmamba.metrics import rows, tables
from cellmamba.metrics.tables import METRIC_DIRECTIONS, _compose, higher_is_better, render_markdown, summarize


def test_composed_directions_equal_the_former_hard_coded_table():
    assert METRIC_DIRECTIONS == {
        "accuracy": "higher", "precision_macro": "higher", "recall_macro": "higher", "f1_macro": "higher",
        "f1_micro": "higher", "f1_macro_union": "unranked", "n_classes_macro": "unranked",
        "n_query_only_classes": "unranked", "query_only_cell_fraction": "unranked",
        "foscttm": "lower", "omics_mixing_entropy": "higher", "seurat_alignment": "higher", "nmi": "higher", "ari": "higher",
        "label_transfer": "higher", "label_transfer_1to2": "higher", "label_transfer_2to1": "higher",
        "avg_bio": "higher", "avg_batch": "higher", "asw_cell": "higher", "isolated_label_f1": "higher",
        "isolated_label_asw": "higher", "asw_batch": "higher", "graph_connectivity": "higher", "pcr": "higher",
        "ilisi": "higher", "clisi": "higher",
        "pearson_delta*": "higher", "mse*": "lower", "top1": "higher", "top2": "higher", "top3": "higher",
        "top4": "higher", "top5": "higher", "top6": "higher", "top7": "higher", "top8": "higher",
        "n_conditions": "unranked", "n_queries": "unranked", "n_candidates": "unranked",
        # metrics.genes (the gene analyses' tables)
        "auroc": "higher", "auprc": "higher", "positive_rate": "unranked", "n_pairs": "unranked",
        "n_positive": "unranked", "n_genes": "unranked", "overlap_top10": "higher", "overlap_top50": "higher",
        "overlap_top100": "higher", "overlap_top*": "higher", "spearman": "higher", "n_cells": "unranked",
        "n_cells_spearman": "unranked",
        # metrics.trajectory
        "trajectory_conservation": "higher", "dpt_spearman_pseudotime": "higher", "dpt_spearman_time": "higher",
        "root_pseudotime_quantile": "lower"}
    # the former LOWER_IS_BETTER = ("foscttm", "mse") (prefix rule) and NOT_RANKED list, value for value
    expected = {
        "accuracy": True, "precision_macro": True, "recall_macro": True, "f1_macro": True, "f1_micro": True,
        "f1_macro_union": None, "n_classes_macro": None, "n_query_only_classes": None,
        "query_only_cell_fraction": None, "foscttm": False, "omics_mixing_entropy": True, "nmi": True, "ari": True, "label_transfer": True,
        "label_transfer_1to2": True, "label_transfer_2to1": True, "avg_bio": True, "avg_batch": True,
        "asw_cell": True, "isolated_label_f1": True, "isolated_label_asw": True, "asw_batch": True,
        "graph_connectivity": True, "pcr": True, "ilisi": True, "clisi": True,
        "pearson_delta": True, "pearson_delta_de20": True, "pearson_delta_de50": True,
        "pearson_delta_combo_seen1": True, "pearson_delta_de20_unseen_single": True,
        "mse": False, "mse_de20": False, "mse_de50": False, "mse_combo_seen1": False,
        "mse_de20_unseen_single": False, "top1": True, "top8": True,
        "n_conditions": None, "n_queries": None, "n_candidates": None, "unknown_metric": True,
        "auroc": True, "overlap_top20": True, "positive_rate": None, "n_pairs": None,
        "trajectory_conservation": True, "root_pseudotime_quantile": False}
    assert {m: higher_is_better(m) for m in expected} == expected
    assert tables.LOWER_IS_BETTER == ("foscttm", "mse", "root_pseudotime_quantile")
    assert tables.NOT_RANKED == ("f1_macro_union", "n_classes_macro", "n_query_only_classes", "query_only_cell_fraction",
                                 "n_conditions", "n_queries", "n_candidates", "positive_rate", "n_pairs", "n_positive",
                                 "n_genes", "n_cells", "n_cells_spearman")
    summary = summarize([metrics_frame({"accuracy": 0.5}, task="annotation", dataset="d", method="m", seed=0)])
    assert ("best value per column in **bold** (lower is better for foscttm, mse, root_pseudotime_quantile; higher "
            "for the others)."
            in render_markdown(summary, title="t"))


def test_compose_rejects_two_directions_for_one_metric_and_unknown_directions():
    assert _compose({"a": "higher"}, {"a": "higher", "b*": "lower"}) == {"a": "higher", "b*": "lower"}
    with pytest.raises(ValueError, match="'a' is declared 'higher' and 'lower'"):
        _compose({"a": "higher"}, {"a": "lower"})
    with pytest.raises(ValueError, match="direction must be one of"):
        _compose({"a": "up"})


def test_row_helpers_live_in_rows_and_tables_re_exports_them(tmp_path):
    assert (tables.metrics_frame, tables.write_csv, tables.read_metrics) == (rows.metrics_frame, rows.write_csv,
                                                                             rows.read_metrics)
    frame = metrics_frame({"f1_macro": 0.25}, task="annotation", dataset="d", method="m", seed=3,
                          extra={"variant": "v"})
    write_csv(frame, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text() == ("task,dataset,method,seed,metric,value,variant,note\n"
                                                "annotation,d,m,3,f1_macro,0.25,v,\n")
    back, = read_metrics([tmp_path / "m.csv"])
    assert list(back.columns) == [*rows.CORE_COLUMNS, "variant", rows.NOTE]

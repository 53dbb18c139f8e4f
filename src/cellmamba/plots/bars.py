"""Metric bar charts: one panel per dataset (x variant / subgroup) and metric, mean over seeds."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .theme import SCRATCH, finish_figure, is_scratch, is_true, method_color, method_order, save_figure, style

__all__ = ["metric_bars", "TASK_METRICS"]

#: metrics shown in the bar chart of each task (metric_bars' default)
TASK_METRICS = {"annotation": ("accuracy", "f1_macro"), "integration": ("avg_bio", "avg_batch"),
                "perturbation": ("pearson_delta", "pearson_delta_de20"),
                "multiomics": ("foscttm", "label_transfer", "ari")}


def _direction(metric: str) -> str:
    from ..metrics.tables import higher_is_better

    better = higher_is_better(metric)
    return "" if better is None else ("higher is better" if better else "lower is better")


def metric_bars(metric_csvs: Sequence[str | os.PathLike], out: str | os.PathLike, *, task: str,
                metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Bar chart per dataset (x variant / subgroup) and metric: mean over seeds per method.

    Parameters
    ----------
    metric_csvs
        Long per-run metric CSVs (:mod:`cellmamba.metrics.tables`); rows of other tasks are ignored.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    task
        The task whose rows are plotted.
    metrics
        Metrics to show (default :data:`TASK_METRICS` of ``task``).

    Returns
    -------
    pandas.DataFrame
        One row per panel x method: ``dataset``, ``panel`` (variant / subgroup, '' if none),
        ``metric``, ``method``, ``mean``, ``sd`` (ddof 1, NaN with one seed), ``n_seeds``,
        ``best`` (bool), ``values`` (the seeds' values, list).
    """
    from ..metrics.tables import read_metrics

    metrics = list(metrics or TASK_METRICS.get(task, ()))
    if not metrics:
        raise InputError(f"task {task!r}: no metrics to plot; pass metrics=")
    frame = pd.concat(read_metrics(metric_csvs), ignore_index=True)
    frame = frame[(frame["task"] == task) & frame["metric"].isin(metrics)].copy()
    if frame.empty:
        raise InputError(f"{len(metric_csvs)} metric files hold no rows of task {task!r} with metrics {metrics}")
    panel_cols = [c for c in ("variant", "subgroup") if c in frame and frame[c].notna().any()]
    frame["panel"] = frame[panel_cols].fillna("").astype(str).agg(" / ".join, axis=1) if panel_cols else ""
    panel_name = " / ".join(panel_cols)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    rows = []
    for (dataset, panel, metric), block in frame.groupby(["dataset", "panel", "metric"], sort=False):
        for method in method_order(block["method"]):
            vals = block.loc[block["method"] == method, "value"].to_numpy(np.float64)
            ok = vals[np.isfinite(vals)]
            rows.append({"dataset": dataset, "panel": panel, "metric": metric, "method": method,
                         "mean": ok.mean() if len(ok) else np.nan,
                         "sd": ok.std(ddof=1) if len(ok) > 1 else np.nan, "n_seeds": len(ok),
                         "values": list(ok)})
    data = pd.DataFrame(rows)
    data["best"] = False
    from ..metrics.tables import higher_is_better

    for _, idx in data.groupby(["dataset", "panel", "metric"]).groups.items():
        block = data.loc[idx, "mean"]
        if block.notna().sum() > 1 and higher_is_better(data.loc[idx[0], "metric"]) is not None:
            best = block.max() if higher_is_better(data.loc[idx[0], "metric"]) else block.min()
            data.loc[idx, "best"] = np.isclose(block, best)
    simulated = "simulated" in frame and frame["simulated"].map(is_true).any()

    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(data["dataset"], data["panel"])))
    order = [m for m in metrics if m in set(data["metric"])]
    with style():
        n_methods = data.groupby(["dataset", "panel", "metric"]).size().max()
        fig, axes = plt.subplots(len(panels), len(order), squeeze=False,
                                 figsize=(4.2 * len(order), 0.32 * n_methods * len(panels) + 1.2 * len(panels) + 0.6))
        for i, (dataset, panel) in enumerate(panels):
            for j, metric in enumerate(order):
                ax = axes[i, j]
                block = data[(data["dataset"] == dataset) & (data["panel"] == panel) & (data["metric"] == metric)]
                y = np.arange(len(block))[::-1]
                colors = [method_color(m) for m in block["method"]]
                bars = ax.barh(y, block["mean"].fillna(0), xerr=block["sd"].fillna(0), color=colors, height=0.7,
                               error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
                for bar, m in zip(bars, block["method"]):  # scratch controls: their model's colour, lighter, hatched
                    if is_scratch(m):
                        bar.set_hatch("///")
                        bar.set_edgecolor(method_color(m.removesuffix(SCRATCH)))
                for yy, vals in zip(y, block["values"]):
                    jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
                    ax.scatter(vals, yy + np.asarray(jitter), s=12, color="white", edgecolor="black", lw=0.7,
                               zorder=3)
                for yy, mean, best, n in zip(y, block["mean"], block["best"], block["n_seeds"]):
                    if not np.isfinite(mean):
                        ax.text(0, yy, " n/a", va="center", ha="left", fontsize=8, color="dimgray")
                        continue
                    ax.text(mean, yy, f" {mean:.3f}" + (" ★" if best else ""), va="center", ha="left",
                            fontsize=8, fontweight="bold" if best else "normal")
                ax.set_yticks(y, block["method"] if j == 0 else [""] * len(y))
                top = np.nanmax(np.concatenate([block["mean"].to_numpy(float) + block["sd"].fillna(0).to_numpy(),
                                                [v for vs in block["values"] for v in vs] or [0.0]]))
                ax.set_xlim(min(0.0, np.nanmin(block["mean"].fillna(0))), max(top, 1e-9) * 1.3)
                ax.set_xlabel(f"{metric} ({_direction(metric)})" if _direction(metric) else metric)
                where = f"{dataset}" + (f" · {panel_name} {panel}" if panel else "")
                ax.set_title(where, loc="left")
                ax.grid(axis="x", alpha=0.3)
        n_seeds = int(data["n_seeds"].max())
        finish_figure(fig, f"{task}: mean over {n_seeds} seed{'s' if n_seeds != 1 else ''} per method "
                     f"(error bar: sd; dots: seeds; ★ best)" + (" (simulated data)" if simulated else ""))
        save_figure(fig, out)
    return data

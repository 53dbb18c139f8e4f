"""Trajectory figure: each method's diffusion pseudotime against the published pseudotime."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import InputError
from ..metrics.trajectory import PER_CELL_COLUMNS
from .theme import finish_figure, method_color, method_kind, method_order, save_figure, style, title_color

__all__ = ["trajectory_scatter"]

_COLUMNS = PER_CELL_COLUMNS[:6]        # "root" is optional
_PT, _TIME = PER_CELL_COLUMNS[4], PER_CELL_COLUMNS[5]


def trajectory_scatter(per_cell, out: str | os.PathLike, *, title: str, simulated: bool = False,
                       max_points: int = 20000, seed: int = 0) -> pd.DataFrame:
    """The embedding's DPT (y) against the published pseudotime (x), one panel per method, cells
    coloured by their measured time where the dataset has one.

    Draws what the scoring computed (rule score_trajectory's ``per_cell.csv``): nothing is
    recomputed but the Spearman correlations printed in each panel, over the cells drawn from.

    Parameters
    ----------
    per_cell
        DataFrame or CSV path with columns ``cell, method, seed, dpt, published_pseudotime,
        measured_time`` (:data:`cellmamba.metrics.trajectory.PER_CELL_COLUMNS`; one seed per
        method; ``measured_time`` NaN without one) and optionally ``root`` (True for the root
        cell, drawn as a star).
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    title, simulated
        The dataset's line of the title; whether its data are simulated.
    max_points
        At most this many cells per panel are drawn (a seeded sample; BMMC has ~10^4-10^5); the
        correlations use every cell.
    seed
        Seed of that sample.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method``, ``n_cells``, ``spearman_pseudotime``, ``spearman_time``.
    """
    from ..metrics.trajectory import spearman

    data = pd.read_csv(per_cell) if isinstance(per_cell, (str, os.PathLike)) else per_cell.copy()
    missing = [c for c in _COLUMNS if c not in data.columns]
    if missing:
        raise InputError(f"{per_cell if isinstance(per_cell, (str, os.PathLike)) else 'per_cell'}: columns "
                         f"{missing} are missing; expected {list(_COLUMNS)} (rule score_trajectory's per_cell.csv)")
    if data.empty:
        raise InputError("trajectory_scatter: no cells to draw")
    methods = method_order(data["method"].astype(str).unique())
    has_time = bool(np.isfinite(data[_TIME].to_numpy(np.float64)).any())
    times = sorted(set(data[_TIME].dropna().tolist())) if has_time else []
    summary = []

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n_cols = min(len(methods), 4)
    n_rows = -(-len(methods) // n_cols)
    rng = np.random.default_rng(seed)
    palette = plt.get_cmap("viridis")
    colour_of = {t: palette(i / max(len(times) - 1, 1)) for i, t in enumerate(times)}
    with style():
        fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, figsize=(3.0 * n_cols + 0.4, 2.8 * n_rows + 1.1))
        for ax in axes.ravel()[len(methods):]:
            ax.set_visible(False)
        for ax, method in zip(axes.ravel(), methods):
            block = data[data["method"].astype(str) == method]
            rho_pt = spearman(block[_PT], block["dpt"])
            rho_t = spearman(block[_TIME], block["dpt"]) if has_time else float("nan")
            summary.append({"method": method, "n_cells": len(block), "spearman_pseudotime": rho_pt,
                            "spearman_time": rho_t})
            shown = block if len(block) <= max_points else block.iloc[np.sort(rng.choice(len(block), max_points,
                                                                                         replace=False))]
            if has_time:
                colours = [colour_of[t] for t in shown[_TIME]]
            else:
                colours = "black" if method_kind(method) == "baseline" else method_color(method)
            ax.scatter(shown[_PT], shown["dpt"], s=6 if len(shown) < 2000 else 2, c=colours, lw=0,
                       alpha=0.8, rasterized=True)
            if "root" in block and block["root"].astype(bool).any():   # the root scib chose
                root = block[block["root"].astype(bool)]
                ax.scatter(root[_PT], root["dpt"], s=90, marker="*", color="#D55E00", edgecolor="black",
                           lw=0.6, zorder=4)
            text = f"ρ pseudotime = {rho_pt:.2f}" + (f"\nρ time = {rho_t:.2f}" if has_time else "")
            ax.text(0.03, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
            ax.set_title(method, color=title_color(method), fontweight="bold")
            ax.set_xlabel("published pseudotime")
            ax.set_ylabel("DPT on the embedding")
            ax.set_ylim(-0.05, 1.05)
        if has_time:
            handles = [Line2D([], [], ls="", marker="o", color=colour_of[t], label=f"{t:g}") for t in times]
        else:
            handles = []
        handles.append(Line2D([], [], ls="", marker="*", markersize=10, color="#D55E00", markeredgecolor="black",
                              label="root cell (scib)"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   title="measured time" if has_time else None, bbox_to_anchor=(0.5, 0.0))
        bottom = 0.6
        finish_figure(fig, f"{title}: diffusion pseudotime of each embedding (root as scib chooses it) vs the "
                      "published pseudotime" + (" (simulated)" if simulated else ""), bottom=bottom)
        save_figure(fig, out)
    return pd.DataFrame(summary)

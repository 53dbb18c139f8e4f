"""Perturbation scatter: predicted vs measured change from the control mean."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .theme import files_by_method, finish_figure, is_true, method_kind, title_color, method_color, save_figure, style

__all__ = ["perturbation_scatter"]


def _pick_conditions(test: Sequence[str], subgroups: Mapping[str, Sequence[str]], n: int) -> list[str]:
    """One condition per subgroup (in subgroup order) while possible, then the rest of ``test``."""
    chosen = []
    for name in sorted(subgroups):
        for c in subgroups[name]:
            if c in test and c not in chosen:
                chosen.append(c)
                break
        if len(chosen) == n:
            return chosen
    return (chosen + [c for c in test if c not in chosen])[:n]


def perturbation_scatter(deltas_files, out: str | os.PathLike, *, n_conditions: int = 4,
                         n_de: int = 20) -> pd.DataFrame:
    """Predicted vs measured change from the control mean, per test condition and method.

    Draws what the scoring computed (no expression is read here): each method's deltas file
    (:func:`cellmamba.metrics.perturbation.write_deltas`, rule score_perturbation).

    Parameters
    ----------
    deltas_files
        Mapping method -> deltas h5ad, or a list of ``.../<method>/seed<s>/deltas.h5ad`` (the
        first file of each method is drawn). All of one dataset, with the same test conditions.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    n_conditions
        Test conditions shown (rows), one per GEARS subgroup while possible (the first of each
        subgroup in the split's order).
    n_de
        Top DE genes highlighted (GEARS' list, as the metrics use); must be the scoring's.

    Returns
    -------
    pandas.DataFrame
        One row per method x condition x gene: ``method``, ``condition``, ``subgroup``, ``gene``,
        ``measured`` (condition mean - control mean), ``predicted`` (prediction - control mean),
        ``de`` (bool: among the top ``n_de``), ``pearson_delta``, ``pearson_delta_de<n_de>``.
    """
    from ..metrics.perturbation import read_deltas

    if n_conditions < 1:
        raise InputError(f"n_conditions must be >= 1, got {n_conditions}")
    files = files_by_method(deltas_files)
    columns = ["condition", "subgroup", "gene", "measured", "predicted", "de", "pearson_delta",
               f"pearson_delta_de{n_de}"]
    read = {}
    for method, path in files.items():
        data, info = read_deltas(path)
        if int(info.get("n_de", -1)) != n_de:
            raise InputError(f"{path}: deltas scored with n_de={info.get('n_de')}; the figure asks for n_de={n_de}")
        read[method] = (data, info)
    first, (data0, info) = next(iter(files.values())), next(iter(read.values()))
    test = list(dict.fromkeys(data0["condition"]))
    subgroups = {}
    for c, g in dict(zip(data0["condition"], data0["subgroup"])).items():
        if g:
            subgroups.setdefault(g, []).append(c)
    chosen = _pick_conditions(test, subgroups, n_conditions)
    if not chosen:
        raise InputError(f"{first}: no test condition to plot")
    group_of = {c: g for g, conds in subgroups.items() for c in conds}
    genes = list(data0.loc[data0["condition"] == chosen[0], "gene"])
    frames = []
    for method, (data, _) in read.items():
        missing = [c for c in chosen if c not in set(data["condition"])]
        if missing:
            raise InputError(f"{files[method]}: no prediction for test conditions {missing}")
        block = data[data["condition"].isin(chosen)]
        if list(block.loc[block["condition"] == chosen[0], "gene"]) != genes:
            raise InputError(f"{files[method]}: genes differ from {first}'s")
        block = pd.concat([block[block["condition"] == c] for c in chosen])
        frames.append(block[columns].assign(method=method))
    data = pd.concat(frames, ignore_index=True)[["method"] + columns]
    simulated = is_true(info.get("simulated", False))

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods = list(files)
    with style():
        fig, axes = plt.subplots(len(chosen), len(methods), squeeze=False,
                                 figsize=(2.6 * len(methods) + 0.6, 2.6 * len(chosen) + 1.2))
        for i, c in enumerate(chosen):
            rows = data[data["condition"] == c]
            lo = float(np.nanmin(rows[["measured", "predicted"]].to_numpy()))
            hi = float(np.nanmax(rows[["measured", "predicted"]].to_numpy()))
            pad = 0.05 * (hi - lo or 1.0)
            lim = (lo - pad, hi + pad)
            for j, method in enumerate(methods):
                ax = axes[i, j]
                block = rows[rows["method"] == method]
                rest, top = block[~block["de"]], block[block["de"]]
                ax.plot(lim, lim, color="black", lw=0.8, ls="--", zorder=1)
                ax.axhline(0, color="0.85", lw=0.6, zorder=0)
                ax.axvline(0, color="0.85", lw=0.6, zorder=0)
                ax.scatter(rest["measured"], rest["predicted"], s=5, color="0.78", lw=0, zorder=2, rasterized=True)
                # baselines are grey: their DE genes are drawn black so they stand out from the other genes
                hl = "black" if method_kind(method) == "baseline" else method_color(method)
                ax.scatter(top["measured"], top["predicted"], s=14, color=hl, edgecolor="black",
                           lw=0.4, zorder=3)
                ax.set_xlim(lim)
                ax.set_ylim(lim)
                ax.set_aspect("equal")
                r, r_de = block["pearson_delta"].iloc[0], block[f"pearson_delta_de{n_de}"].iloc[0]
                ax.text(0.03, 0.97, f"r = {r:.2f}\nr DE{n_de} = {r_de:.2f}", transform=ax.transAxes, va="top",
                        ha="left", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
                if i == 0:
                    ax.set_title(method, color=title_color(method), fontweight="bold")
                if j == 0:
                    ax.set_ylabel(f"{c}\n({group_of.get(c, 'test')})\npredicted Δ")
                if i == len(chosen) - 1:
                    ax.set_xlabel("measured Δ")
        handles = [Line2D([], [], ls="", marker="o", color="0.78", label="all genes"),
                   Line2D([], [], ls="", marker="o", color="0.3", markeredgecolor="black",
                          label=f"top-{n_de} DE genes (method colour; black for baselines)"),
                   Line2D([], [], ls="--", color="black", label="predicted = measured")]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
        name = info.get("dataset", "perturbation")
        finish_figure(fig, f"{name}: perturbation prediction, change from the control mean (Δ, log1p expression) "
                f"of {len(chosen)} test conditions" + (" (simulated)" if simulated else ""), bottom=0.35)
        save_figure(fig, out)
    return data

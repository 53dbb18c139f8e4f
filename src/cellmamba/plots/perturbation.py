"""Perturbation scatter: predicted vs measured change from the control mean."""
from __future__ import annotations

import os
from pathlib import Path
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


def perturbation_scatter(dataset: str | os.PathLike, split: str | os.PathLike, predictions_files,
                         out: str | os.PathLike, *, n_conditions: int = 4, n_de: int = 20) -> pd.DataFrame:
    """Predicted vs measured change from the control mean, per test condition and method.

    Parameters
    ----------
    dataset
        Standard-schema perturbation h5ad (obs ``condition``, X log1p expression).
    split
        The GEARS split JSON (test conditions and subgroups).
    predictions_files
        Mapping method -> profiles h5ad, or a list of ``.../<method>/seed<s>/predictions.h5ad``.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    n_conditions
        Test conditions shown (rows), one per GEARS subgroup while possible.
    n_de
        Top DE genes highlighted (GEARS' list, as the metrics use).

    Returns
    -------
    pandas.DataFrame
        One row per method x condition x gene: ``method``, ``condition``, ``subgroup``, ``gene``,
        ``measured`` (condition mean - control mean), ``predicted`` (prediction - control mean),
        ``de`` (bool: among the top ``n_de``), ``pearson_delta``, ``pearson_delta_de<n_de>``.
    """
    from ..conditions import CTRL, de_gene_lists, gene_set
    from ..datasets.gears_split import read_split
    from ..io import read_h5ad_checked, read_profiles
    from ..keys import OBS_CONDITION
    from ..metrics.perturbation import condition_profiles, perturbation_scores

    if n_conditions < 1:
        raise InputError(f"n_conditions must be >= 1, got {n_conditions}")
    files = files_by_method(predictions_files)
    adata = read_h5ad_checked(dataset)
    sp_ = read_split(split)
    genes = pd.Index(adata.var_names.astype(str))
    conditions = adata.obs[OBS_CONDITION].astype(str).to_numpy()
    test = [c for c in sp_.test if c != CTRL]
    chosen = _pick_conditions(test, sp_.test_subgroup, n_conditions)
    if not chosen:
        raise InputError(f"{split}: no test condition to plot")
    ctrl = condition_profiles(adata.X, conditions, [CTRL]).iloc[0].to_numpy()
    truth = condition_profiles(adata.X, conditions, chosen)
    truth.columns = genes
    de = de_gene_lists(adata, chosen, n_de=n_de)
    group_of = {c: g for g, conds in sp_.test_subgroup.items() for c in conds}
    simulated = is_true(dict(adata.uns.get("cellmamba", {})).get("simulated", False))
    frames = []
    for method, path in files.items():
        pred, _, _ = read_profiles(path)
        if not genes.equals(pd.Index(pred.columns)):
            raise InputError(f"{path}: genes differ from {dataset}'s var_names ({pred.shape[1]} vs {len(genes)})")
        key = {gene_set(c): c for c in pred.index}   # A+B and B+A are one condition
        missing = [c for c in chosen if gene_set(c) not in key]
        if missing:
            raise InputError(f"{path}: no prediction for test conditions {missing}")
        p = pred.loc[[key[gene_set(c)] for c in chosen]]
        p.index = truth.index
        scores = perturbation_scores(p, truth, ctrl, de_genes=de, n_de=n_de)
        for c in chosen:
            top = set(de[c][:n_de])
            frames.append(pd.DataFrame({
                "method": method, "condition": c, "subgroup": group_of.get(c, ""), "gene": genes,
                "measured": truth.loc[c].to_numpy() - ctrl, "predicted": p.loc[c].to_numpy() - ctrl,
                "de": genes.isin(top), "pearson_delta": scores.loc[c, "pearson_delta"],
                f"pearson_delta_de{n_de}": scores.loc[c, f"pearson_delta_de{n_de}"]}))
    data = pd.concat(frames, ignore_index=True)

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
        name = Path(dataset).stem
        finish_figure(fig, f"{name}: perturbation prediction, change from the control mean (Δ, log1p expression) "
                f"of {len(chosen)} test conditions" + (" (simulated)" if simulated else ""), bottom=0.35)
        save_figure(fig, out)
    return data

"""Figures of the gene analyses (issue 24): gene-pair AUROC / AUPRC bars, and the density of input
rank vs reconstructed rank per model (GeneMamba Fig. 4)."""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from .theme import finish_figure, is_scratch, method_color, method_order, save_figure, style

__all__ = ["gene_pair_bars", "rank_density"]

#: reference rows of the gene-pair table (no embedding): drawn as vertical lines
_REFERENCES = {"random": ":", "coexpression": "--"}


def gene_pair_bars(table_csv: str | os.PathLike, out: str | os.PathLike, *, title: str = "") -> pd.DataFrame:
    """Bars of AUROC and AUPRC per model and embedding, one row of panels per pair set
    (``all``, ``strict``); the references (co-expression, random) as vertical lines.

    Parameters
    ----------
    table_csv
        results/tables/gene_pairs.csv (a :func:`cellmamba.metrics.summarize` frame with the
        ``embedding`` flag).
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    title
        Figure title (default: a description of the pairs).

    Returns
    -------
    DataFrame of the plotted values: ``dataset``, ``metric``, ``method``, ``embedding``, ``mean``.
    """
    table = pd.read_csv(table_csv, keep_default_na=False, na_values=[""])
    need = {"dataset", "method", "metric", "mean", "embedding"}
    if not need <= set(table.columns):
        raise InputError(f"{table_csv}: lacks columns {sorted(need - set(table.columns))} (expected the gene-pair table)")
    table["embedding"] = table["embedding"].fillna("").astype(str)
    data = table[table["metric"].isin(["auroc", "auprc"])][["dataset", "metric", "method", "embedding", "mean"]]
    if data.empty:
        raise InputError(f"{table_csv}: no auroc / auprc rows")
    pair_sets = list(dict.fromkeys(data["dataset"]))
    models = data[~data["method"].isin(list(_REFERENCES))]
    order = [(m, e) for m in method_order(models["method"]) for e in ("token", "contextual")
             if ((models["method"] == m) & (models["embedding"] == e)).any()]

    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(len(pair_sets), 2, squeeze=False, figsize=(9.5, 0.3 * len(order) * len(pair_sets)
                                                                              + 1.4 * len(pair_sets) + 0.4))
        for i, pair_set in enumerate(pair_sets):
            for j, metric in enumerate(("auroc", "auprc")):
                ax = axes[i, j]
                block = data[(data["dataset"] == pair_set) & (data["metric"] == metric)]
                y = np.arange(len(order))[::-1]
                for yy, (m, e) in zip(y, order):
                    v = block.loc[(block["method"] == m) & (block["embedding"] == e), "mean"]
                    value = float(v.iloc[0]) if len(v) else np.nan
                    ax.barh(yy, 0 if np.isnan(value) else value, color=method_color(m), height=0.7,
                                  hatch="///" if e == "contextual" else None,
                                  edgecolor=method_color(m.removesuffix("_scratch")) if is_scratch(m) else "white")
                    ax.text(0 if np.isnan(value) else value, yy, " n/a" if np.isnan(value) else f" {value:.3f}",
                            va="center", ha="left", fontsize=8)
                refs = []
                for ref, line in _REFERENCES.items():
                    v = block.loc[block["method"] == ref, "mean"]
                    if len(v) and np.isfinite(v.iloc[0]):
                        ax.axvline(float(v.iloc[0]), color="black", ls=line, lw=1)
                        refs.append(f"{ref} {float(v.iloc[0]):.3f}")
                ax.set_yticks(y, [f"{m} · {e}" for m, e in order] if j == 0 else [""] * len(order))
                vals = block["mean"].to_numpy(float)
                ax.set_xlim(0, max(np.nanmax(vals) if np.isfinite(vals).any() else 1.0, 1e-9) * 1.25)
                ax.set_xlabel(f"{metric.upper()} (higher is better)")
                ax.set_title(f"{pair_set} pairs" + (f" · {', '.join(refs)}" if refs else ""), loc="left")
                ax.grid(axis="x", alpha=0.3)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="black", ls=line, lw=1, label=ref) for ref, line in _REFERENCES.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        finish_figure(fig, title or "Gene pairs: cosine similarity of gene embeddings vs held-out gene-set "
                      "co-membership (hatched: contextual states)", bottom=0.35)
        save_figure(fig, out)
    return data.reset_index(drop=True)


def rank_density(densities: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
                 metrics: Mapping[str, str | os.PathLike] | None = None, title: str = "") -> pd.DataFrame:
    """One panel per model: the 2-D histogram of input rank (x) vs reconstructed rank (y) of the
    genes present in both rankings, log colour scale, the diagonal dotted.

    Parameters
    ----------
    densities
        Model -> density CSV of :func:`cellmamba.gene_analyses.rank_reconstruction_files`.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    metrics
        Model -> its metric CSV; where given, the panel title carries the mean Spearman and top-k overlaps.
    title
        Figure title.

    Returns
    -------
    DataFrame: ``method``, ``n_genes`` (gene ranks counted), ``spearman`` (NaN without metrics).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if not densities:
        raise InputError("rank_density: no density files")
    methods = method_order(densities)
    rows = []
    with style():
        n = len(methods)
        cols = min(n, 3)
        fig, axes = plt.subplots(-(-n // cols), cols, squeeze=False, figsize=(3.6 * cols, 3.4 * -(-n // cols) + 0.5))
        for ax in axes.ravel()[n:]:
            ax.set_visible(False)
        for ax, m in zip(axes.ravel(), methods):
            d = pd.read_csv(densities[m])
            need = {"input_start", "input_end", "output_start", "output_end", "count"}
            if not need <= set(d.columns):
                raise InputError(f"{densities[m]}: lacks columns {sorted(need - set(d.columns))}")
            xs, ys = np.unique(d["input_start"]), np.unique(d["output_start"])
            grid = d.pivot(index="output_start", columns="input_start", values="count").reindex(index=ys, columns=xs)
            top = float(max(d["input_end"].max(), d["output_end"].max()))
            counts = grid.to_numpy(float)
            total = int(np.nansum(counts))
            shown = np.where(counts > 0, counts, np.nan)
            img = ax.imshow(shown, origin="lower", extent=(0, top, 0, top), aspect="equal", cmap="viridis",
                            norm=LogNorm(vmin=1, vmax=max(np.nanmax(shown) if total else 2, 2)), interpolation="nearest")
            ax.plot([0, top], [0, top], color="white", ls=":", lw=1)
            label, spearman = m, np.nan
            if metrics and m in metrics:
                mf = pd.read_csv(metrics[m]).set_index("metric")["value"]
                spearman = float(mf.get("spearman", np.nan))
                tops = [f"top{k[len('overlap_top'):]} {float(v):.2f}" for k, v in mf.items() if str(k).startswith("overlap_top")]
                label = f"{m}\nSpearman " + (f"{spearman:.2f}" if np.isfinite(spearman) else "n/a") + " · " + " · ".join(tops)
            ax.set_title(label, loc="left", fontsize=9)
            ax.set_xlabel("input rank")
            ax.set_ylabel("reconstructed rank")
            fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04, label="genes")
            rows.append({"method": m, "n_genes": total, "spearman": spearman})
        finish_figure(fig, title or "Rank reconstruction: input vs reconstructed rank of the genes in both")
        save_figure(fig, out)
    return pd.DataFrame(rows)

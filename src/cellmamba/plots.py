"""Figures of the benchmark: metric bars, embedding UMAPs, perturbation scatter, confusion
matrices, pretraining loss curves and GPU throughput.

Every figure is drawn in one style (:func:`style`): readable font sizes, a fixed colour per
method across all figures (baselines grey, Mamba models blues / green, Transformer peers
oranges / pink; Okabe-Ito colours, safe for colour-blind readers), titles naming the dataset,
the task, the metric's direction and ``(simulated)`` on simulated data. Each function writes a
PNG (150 dpi) and a PDF beside it (``out`` with its suffix replaced), atomically, and returns the
data it plotted as a DataFrame.

Departures from the papers: the UMAPs use scanpy's defaults (15 neighbours on the whole
embedding, ``min_dist`` 0.5) with a fixed seed on ONE seed's embedding per method (the papers'
figures show one run too, but do not state their UMAP settings); the perturbation scatter shows
changes from the control mean (GEARS / scGPT plot the same quantity as box plots over the top-20
DE genes, not as a scatter).
"""
from __future__ import annotations

import contextlib
import logging
import os
import textwrap
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path

__all__ = ["style", "method_color", "method_order", "save_figure", "metric_bars", "embedding_umaps",
           "perturbation_scatter", "confusion_heatmaps", "loss_curves", "throughput", "task_throughput",
           "table_html", "TASK_METRICS"]

log = logging.getLogger(__name__)

#: metrics shown in the bar chart of each task (metric_bars' default)
TASK_METRICS = {"annotation": ("accuracy", "f1_macro"), "integration": ("avg_bio", "avg_batch"),
                "perturbation": ("pearson_delta", "pearson_delta_de20"),
                "multiomics": ("foscttm", "label_transfer", "ari")}

# Okabe-Ito: blue, sky blue, bluish green for Mamba; vermillion, orange, reddish purple for Transformers
_MAMBA = {"scmamba2": "#0072B2", "genemamba": "#56B4E9", "scmamba": "#0072B2", "scmamba_bimamba": "#009E73",
          "mamba2": "#0072B2", "bimamba_mamba2": "#009E73", "bimamba_mamba1": "#56B4E9"}
_TRANSFORMER = {"scmamba2_transformer": "#D55E00", "genemamba_transformer": "#E69F00",
                "scmamba_transformer": "#D55E00", "transformer": "#D55E00"}
_BASELINE = {"logreg": "#4D4D4D", "knn_pca": "#999999", "pca": "#4D4D4D", "harmony": "#7F7F7F",
             "scvi": "#B3B3B3", "no_change": "#4D4D4D", "train_mean": "#7F7F7F", "additive": "#B3B3B3",
             "pca_cca": "#7F7F7F"}
_GREYS = ("#4D4D4D", "#7F7F7F", "#B3B3B3", "#999999", "#666666")
_FONT = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12, "axes.spines.top": False,
         "axes.spines.right": False, "savefig.bbox": "tight", "pdf.fonttype": 42, "figure.dpi": 100}
#: categorical colours of cell types / batches in UMAPs (tab10, then tab20 beyond 10 categories)
_DPI = 150


def _kind(method: str) -> str:
    if method in _BASELINE:
        return "baseline"
    if method in _TRANSFORMER or method.endswith("transformer"):
        return "transformer"
    if method in _MAMBA or "mamba" in method:
        return "mamba"
    return "baseline"


def method_color(method: str) -> str:
    """The colour of ``method`` in every figure (hex): grey for baselines, blue / green for Mamba
    models, orange / pink for Transformers; unknown names get a stable shade of their family."""
    for table in (_BASELINE, _MAMBA, _TRANSFORMER):
        if method in table:
            return table[method]
    kind = _kind(method)
    pool = {"baseline": _GREYS, "mamba": ("#0072B2", "#56B4E9", "#009E73"),
            "transformer": ("#D55E00", "#E69F00", "#CC79A7")}[kind]
    # a stable hash (Python's str hash is salted per process)
    return pool[sum(map(ord, method)) % len(pool)]


def method_order(methods: Iterable[str]) -> list[str]:
    """Baselines first, then each Mamba model followed by its Transformer peer (input order kept)."""
    methods = list(dict.fromkeys(methods))
    base = [m for m in methods if _kind(m) == "baseline"]
    mamba = [m for m in methods if _kind(m) == "mamba"]
    trans = [m for m in methods if _kind(m) == "transformer"]
    out = list(base)
    for m in mamba:
        out.append(m)
        peer = f"{m}_transformer"
        if peer in trans:
            out.append(peer)
            trans.remove(peer)
    return out + trans


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings of every cellmamba figure (Agg backend, readable fonts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(_FONT):
        yield


def save_figure(fig, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``fig`` as ``out`` with suffix .png (150 dpi) and .pdf, atomically; close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = (out.with_suffix(".png"), out.with_suffix(".pdf"))
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=_DPI, format=path.suffix[1:])
    finally:
        plt.close(fig)
    return paths


def _finish(fig, title: str, *, bottom: float = 0.0, right: float = 0.0) -> None:
    """Suptitle plus a tight layout that keeps ``bottom`` / ``right`` inches free (for a
    figure-level legend or colour bar) and room for the title, so nothing overlaps it."""
    w, h = fig.get_size_inches()
    fig.suptitle(title, y=1 - 0.12 / h, va="top")
    fig.tight_layout(rect=(0, bottom / h, 1 - right / w, 1 - 0.4 / h))


def _title_color(method: str) -> str:
    """Method colour for titles, but dark for the (light grey) baselines so they stay readable."""
    return "black" if _kind(method) == "baseline" else method_color(method)


def _direction(metric: str) -> str:
    from .metrics.tables import higher_is_better

    better = higher_is_better(metric)
    return "" if better is None else ("higher is better" if better else "lower is better")


def _is_true(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not (isinstance(value, float) and np.isnan(value))


def _method_of(path: str | os.PathLike) -> str:
    """``results/<task>/.../<method>/seed<s>/<file>`` -> method."""
    return Path(path).parent.parent.name


def _by_method(files) -> dict[str, Path]:
    """A mapping method -> file, or a list of run files (method taken from the path; the first file
    of each method is kept, i.e. its first seed)."""
    if isinstance(files, Mapping):
        out = {str(k): Path(v) for k, v in files.items()}
    else:
        out = {}
        for f in files:
            out.setdefault(_method_of(f), Path(f))
    if not out:
        raise InputError("no input files given")
    return {m: out[m] for m in method_order(out)}


# --- 1. metric bars -------------------------------------------------------------------------
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
    from .metrics.tables import read_metrics

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
    from .metrics.tables import higher_is_better

    for _, idx in data.groupby(["dataset", "panel", "metric"]).groups.items():
        block = data.loc[idx, "mean"]
        if block.notna().sum() > 1 and higher_is_better(data.loc[idx[0], "metric"]) is not None:
            best = block.max() if higher_is_better(data.loc[idx[0], "metric"]) else block.min()
            data.loc[idx, "best"] = np.isclose(block, best)
    simulated = "simulated" in frame and frame["simulated"].map(_is_true).any()

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
                ax.barh(y, block["mean"].fillna(0), xerr=block["sd"].fillna(0), color=colors, height=0.7,
                        error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
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
        _finish(fig, f"{task}: mean over {n_seeds} seed{'s' if n_seeds != 1 else ''} per method "
                     f"(error bar: sd; dots: seeds; ★ best)" + (" (simulated data)" if simulated else ""))
        save_figure(fig, out)
    return data


# --- 2. embedding UMAPs ---------------------------------------------------------------------
def _categorical_colors(values: pd.Series) -> dict:
    import matplotlib.pyplot as plt

    cats = list(pd.Categorical(values.astype(str)).categories)
    cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(cats)}


def _umap(emb: np.ndarray, seed: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(emb))]))
    a.obsm["X_emb"] = np.asarray(emb, dtype=np.float32)
    sc.pp.neighbors(a, use_rep="X_emb", random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def _read_embedding(path: Path) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """(obs, embedding, paired): a paired file's two modalities stacked, obs ``modality`` set."""
    from .io import PAIRED_PREFIX, read_h5ad_plain, read_paired_embedding

    a = read_h5ad_plain(path, "an embedding h5ad (obsm['X_emb'] or obsm['emb_<modality>'] x 2)")
    if "X_emb" in a.obsm:
        return a.obs.copy(), np.asarray(a.obsm["X_emb"]), False
    if any(k.startswith(PAIRED_PREFIX) for k in a.obsm):
        obs, mods, x, y = read_paired_embedding(path)
        stacked = pd.concat([obs.assign(modality=m) for m in mods])
        stacked.index = [f"{c}|{m}" for m in mods for c in obs.index]
        return stacked, np.vstack([x, y]), True
    raise InputError(f"{path}: no obsm['X_emb'] and no obsm['emb_<modality>']; found {list(a.obsm)}")


def embedding_umaps(embedding_files, out: str | os.PathLike, *, color: Sequence[str] = ("cell_type", "batch"),
                    title: str = "", simulated: bool = False, seed: int = 0) -> pd.DataFrame:
    """UMAP grid of one dataset's embeddings: methods as columns, colour keys as rows.

    Parameters
    ----------
    embedding_files
        Mapping method -> embedding h5ad, or a list of ``.../<method>/seed<s>/embedding.h5ad``
        (the first file of each method is drawn). Integration files: obsm['X_emb'] (n_cells, d).
        Multi-omics files (obsm['emb_<modality>'] x 2): both modalities' embeddings are stacked
        (2 n_cells rows) and the colour ``batch`` is replaced by ``modality``.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    color
        obs columns to colour by, one row of panels each.
    title, simulated
        Figure title (dataset, task) and whether the data are simulated (added to the title).
    seed
        Seed of the neighbour graph and UMAP.

    Returns
    -------
    pandas.DataFrame
        One row per method x cell: ``method``, ``cell``, ``umap1``, ``umap2`` and the colour columns.
    """
    files = _by_method(embedding_files)
    frames = []
    paired_any = False
    for method, path in files.items():
        obs, emb, paired = _read_embedding(path)
        paired_any |= paired
        keys = [("modality" if paired and c == "batch" else c) for c in color]
        missing = [c for c in keys if c not in obs]
        if missing:
            raise InputError(f"{path}: obs lacks colour columns {missing}; has {list(obs.columns)}")
        xy = _umap(emb, seed)
        frame = pd.DataFrame({"method": method, "cell": obs.index.astype(str), "umap1": xy[:, 0],
                              "umap2": xy[:, 1]})
        for c in keys:
            frame[c] = obs[c].astype(str).to_numpy()
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    keys = [("modality" if paired_any and c == "batch" else c) for c in color]

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods = list(files)
    with style():
        fig, axes = plt.subplots(len(keys), len(methods), squeeze=False,
                                 figsize=(2.8 * len(methods) + 2.2, 2.8 * len(keys) + 0.8))
        rng = np.random.default_rng(seed)
        for i, key in enumerate(keys):
            colors = _categorical_colors(data[key])
            for j, method in enumerate(methods):
                ax = axes[i, j]
                block = data[data["method"] == method]
                block = block.iloc[rng.permutation(len(block))]  # no category painted over the others by order
                ax.scatter(block["umap1"], block["umap2"], s=max(2.0, 3000 / len(block)), lw=0,
                           c=[colors[v] for v in block[key]], rasterized=True)
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ("top", "right"):
                    ax.spines[side].set_visible(True)
                if i == 0:
                    ax.set_title(method, color=_title_color(method), fontweight="bold")
                if j == 0:
                    ax.set_ylabel(f"colour: {key}")
            handles = [Line2D([], [], ls="", marker="o", color=c, label=textwrap.shorten(str(k), 28))
                       for k, c in colors.items()]
            axes[i, -1].legend(handles=handles, title=key, loc="upper left", bbox_to_anchor=(1.02, 1),
                               frameon=False, ncol=1 if len(handles) <= 14 else 2, markerscale=1.2)
        n_cells = data.groupby("method").size().iloc[0]
        what = "both modalities' embeddings of each cell" if paired_any else "cell embeddings"
        _finish(fig, f"{title or 'UMAP'}: {what} ({n_cells:,} points per panel)"
                + (" (simulated)" if simulated else ""))
        save_figure(fig, out)
    return data


# --- 3. perturbation scatter ----------------------------------------------------------------
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
    from .conditions import CTRL, de_gene_lists, gene_set
    from .datasets.gears_split import read_split
    from .io import read_h5ad_checked, read_profiles
    from .keys import OBS_CONDITION
    from .metrics.perturbation import condition_profiles, perturbation_scores

    if n_conditions < 1:
        raise InputError(f"n_conditions must be >= 1, got {n_conditions}")
    files = _by_method(predictions_files)
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
    simulated = _is_true(dict(adata.uns.get("cellmamba", {})).get("simulated", False))
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
                hl = "black" if _kind(method) == "baseline" else method_color(method)
                ax.scatter(top["measured"], top["predicted"], s=14, color=hl, edgecolor="black",
                           lw=0.4, zorder=3)
                ax.set_xlim(lim)
                ax.set_ylim(lim)
                ax.set_aspect("equal")
                r, r_de = block["pearson_delta"].iloc[0], block[f"pearson_delta_de{n_de}"].iloc[0]
                ax.text(0.03, 0.97, f"r = {r:.2f}\nr DE{n_de} = {r_de:.2f}", transform=ax.transAxes, va="top",
                        ha="left", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
                if i == 0:
                    ax.set_title(method, color=_title_color(method), fontweight="bold")
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
        _finish(fig, f"{name}: perturbation prediction, change from the control mean (Δ, log1p expression) "
                f"of {len(chosen)} test conditions" + (" (simulated)" if simulated else ""), bottom=0.35)
        save_figure(fig, out)
    return data


# --- 4. confusion matrices ------------------------------------------------------------------
def _read_confusion(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    if frame.empty or not all(np.issubdtype(t, np.number) for t in frame.dtypes):
        raise InputError(f"{path}: expected a confusion matrix CSV (first column true labels, one numeric column "
                         "per predicted label)")
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def confusion_heatmaps(confusion_csvs, out: str | os.PathLike, *, title: str = "", simulated: bool = False,
                       annotate_max: int = 15) -> pd.DataFrame:
    """Row-normalised confusion matrices of one dataset, one panel per method.

    Parameters
    ----------
    confusion_csvs
        Mapping method -> confusion CSV, or a list of ``.../<method>/seed<s>/confusion.csv``
        (first column: true label; columns: predicted labels; counts).
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    title, simulated
        Figure title (dataset) and whether the data are simulated.
    annotate_max
        Counts are written in the cells when there are at most this many classes.

    Returns
    -------
    pandas.DataFrame
        One row per method x true x predicted: ``count`` and ``fraction`` (count / row total;
        NaN for a class without query cells).
    """
    files = _by_method(confusion_csvs)
    mats = {m: _read_confusion(p) for m, p in files.items()}
    rows_l = list(dict.fromkeys(l for m in mats.values() for l in m.index))
    cols_l = list(dict.fromkeys(rows_l + [l for m in mats.values() for l in m.columns]))
    frames = []
    for method, mat in mats.items():
        mat = mat.reindex(index=rows_l, columns=cols_l, fill_value=0)
        total = mat.sum(axis=1)
        frac = mat.div(total.where(total > 0), axis=0)
        long = mat.stack().rename("count").to_frame().join(frac.stack().rename("fraction"))
        long.index.names = ["true", "predicted"]
        frames.append(long.reset_index().assign(method=method))
    data = pd.concat(frames, ignore_index=True)[["method", "true", "predicted", "count", "fraction"]]

    import matplotlib.pyplot as plt

    def wrap(s):
        return "\n".join(textwrap.wrap(s, 18, break_on_hyphens=False, break_long_words=False)) or s

    methods = list(mats)
    ncol = min(3, len(methods))
    nrow = -(-len(methods) // ncol)
    side = max(3.2, 0.42 * len(cols_l) + 1.6)
    with style():
        fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(side * ncol + 1.2, side * nrow + 1.0))
        im = None
        for k, method in enumerate(methods):
            ax = axes[k // ncol, k % ncol]
            block = data[data["method"] == method]
            frac = block.pivot(index="true", columns="predicted", values="fraction").reindex(index=rows_l,
                                                                                              columns=cols_l)
            count = block.pivot(index="true", columns="predicted", values="count").reindex(index=rows_l,
                                                                                            columns=cols_l)
            im = ax.imshow(frac.to_numpy(float), cmap="Blues", vmin=0, vmax=1, aspect="auto")
            if len(cols_l) <= annotate_max:
                for (a, b), v in np.ndenumerate(count.to_numpy()):
                    if v:
                        f = frac.to_numpy(float)[a, b]
                        ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=8,
                                color="white" if f > 0.6 else "black")
            ax.set_xticks(range(len(cols_l)), [wrap(c) for c in cols_l], rotation=60, ha="right",
                          rotation_mode="anchor", fontsize=8)
            ax.set_yticks(range(len(rows_l)), [wrap(c) for c in rows_l] if k % ncol == 0 else [], fontsize=8)
            ax.set_title(method, color=_title_color(method), fontweight="bold")
            ax.set_xlabel("predicted")
            if k % ncol == 0:
                ax.set_ylabel("true cell type")
        for k in range(len(methods), nrow * ncol):
            axes[k // ncol, k % ncol].axis("off")
        _finish(fig, f"{title or 'annotation'}: confusion matrices on the query split "
                "(colour: row-normalised; numbers: cell counts)" + (" (simulated)" if simulated else ""), right=1.1)
        w = fig.get_size_inches()[0]
        cax = fig.add_axes((1 - 0.8 / w, 0.3, 0.15 / w, 0.4))
        fig.colorbar(im, cax=cax, label="fraction of the true class")
        save_figure(fig, out)
    return data


# --- 5. pretraining loss --------------------------------------------------------------------
def loss_curves(metrics_csvs, out: str | os.PathLike) -> pd.DataFrame:
    """Pretraining loss vs optimizer step: one panel per recipe, the Mamba model and its peer.

    Parameters
    ----------
    metrics_csvs
        Mapping model -> ``results/pretrain/<model>/metrics.csv``, or a list of those paths (the
        model is the parent folder's name). Columns ``step`` and ``loss``. A file without rows
        (empty, or a header only: a run that logged nothing) is left out with a warning; a
        missing file, or no file with rows, is an InputError naming the files.
    out
        Figure path; ``.png`` and ``.pdf`` are written.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``recipe``, ``step``, ``loss``.
    """
    if isinstance(metrics_csvs, Mapping):
        files = {str(k): Path(v) for k, v in metrics_csvs.items()}
    else:
        files = {Path(p).parent.name: Path(p) for p in metrics_csvs}
    if not files:
        raise InputError("no pretraining metrics files given")
    frames, empty = [], []
    for model, path in files.items():
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected the pretraining metrics of {model})")
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frame = None
        if frame is None or frame.empty:
            log.warning("%s: no training rows (the run logged nothing); %s is left out of the figure", path, model)
            empty.append(str(path))
            continue
        missing = [c for c in ("step", "loss") if c not in frame]
        if missing:
            raise InputError(f"{path}: pretraining metrics lack columns {missing}")
        frames.append(pd.DataFrame({"model": model, "recipe": model.removesuffix("_transformer"),
                                    "step": frame["step"].to_numpy(), "loss": frame["loss"].to_numpy(float)}))
    if not frames:
        raise InputError(f"no pretraining metrics file has training rows: {empty} (failed runs? rerun their "
                         "pretrain jobs)")
    data = pd.concat(frames, ignore_index=True)

    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(data["recipe"]))
    with style():
        fig, axes = plt.subplots(1, len(recipes), squeeze=False, figsize=(4.6 * len(recipes), 4.4))
        for ax, recipe in zip(axes[0], recipes):
            block = data[data["recipe"] == recipe]
            for model in method_order(block["model"]):
                sub = block[block["model"] == model]
                label = "Transformer peer" if model.endswith("_transformer") else "Mamba"
                ax.plot(sub["step"], sub["loss"], marker="o", ms=3, color=method_color(model),
                        label=f"{model} ({label})")
            ax.set(xlabel="optimizer step", ylabel="training loss (lower is better)", title=f"recipe {recipe}")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
        _finish(fig, "Pretraining loss (each recipe's own objective; not comparable across recipes)")
        save_figure(fig, out)
    return data


# --- 6. GPU throughput ----------------------------------------------------------------------
def throughput(csv: str | os.PathLike, out: str | os.PathLike) -> pd.DataFrame:
    """Tokens/s and peak GPU memory vs context length (log x), training and forward only.

    Parameters
    ----------
    csv
        ``benchmarks/results/gpu_throughput.csv``: model, mode (train / forward), L, batch, params,
        tokens_per_s, peak_gib, status (ok / oom), device, date.
    out
        Figure path; ``.png`` and ``.pdf`` are written.

    Returns
    -------
    pandas.DataFrame
        The plotted rows (status ``ok``): model, mode, L, tokens_per_s, peak_gib, params.
    """
    df = pd.read_csv(csv)
    need = ["model", "mode", "L", "tokens_per_s", "peak_gib", "status", "device", "date", "params"]
    missing = [c for c in need if c not in df]
    if missing:
        raise InputError(f"{csv}: lacks columns {missing}")
    ok = df[df["status"] == "ok"]
    failed = df[df["status"] != "ok"]
    if ok.empty:
        raise InputError(f"{csv}: no row with status 'ok'")
    modes = [m for m in ("train", "forward") if m in set(ok["mode"])] or list(dict.fromkeys(ok["mode"]))

    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(2, len(modes), squeeze=False, figsize=(5.2 * len(modes), 7.2), sharex=True)
        for j, mode in enumerate(modes):
            for model in method_order(ok["model"]):
                sub = ok[(ok["mode"] == mode) & (ok["model"] == model)].sort_values("L")
                if sub.empty:
                    continue
                label = f"{model} ({sub['params'].iloc[0] / 1e6:.1f}M params)"
                kw = {"marker": "o", "color": method_color(model), "label": label}
                axes[0, j].plot(sub["L"], sub["tokens_per_s"] / 1e6, **kw)
                axes[1, j].plot(sub["L"], sub["peak_gib"], **kw)
                bad = failed[(failed["mode"] == mode) & (failed["model"] == model)]
                for L, status in zip(bad["L"], bad["status"]):
                    axes[1, j].annotate(str(status).upper(), (L, sub["peak_gib"].max()), color=method_color(model),
                                        ha="center", fontsize=8)
            what = "training (fwd + bwd + optimizer)" if mode == "train" else f"{mode}"
            if mode == "train" and "bimamba_mamba2" in set(ok["model"]):
                # DESIGN.md's performance target for BiMamba2 training (issue 3)
                axes[0, j].axhline(1.0, color=method_color("bimamba_mamba2"), ls="--", lw=1)
                axes[0, j].annotate("target: BiMamba2 training 1.0 M", (0.42, 0.97), xycoords=("axes fraction", "data"),
                                    va="top", fontsize=8, color=method_color("bimamba_mamba2"))
            axes[0, j].set(ylabel="M tokens / s\n(higher is better)", title=what)
            axes[1, j].set(xscale="log", xlabel="context length L (tokens)",
                           ylabel="peak GPU memory, GiB\n(lower is better)")
            for ax in axes[:, j]:
                ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
        dev = ", ".join(dict.fromkeys(df["device"].astype(str)))
        date = ", ".join(dict.fromkeys(df["date"].astype(str)))
        _finish(fig, f"GPU throughput vs context length (log scale); {dev}, {date}", bottom=0.4)
        save_figure(fig, out)
    return ok[["model", "mode", "L", "tokens_per_s", "peak_gib", "params"]].reset_index(drop=True)


def task_throughput(csv: str | os.PathLike, out: str | os.PathLike) -> pd.DataFrame:
    """Bars of fine-tuning / prediction throughput and peak memory per task, phase and backbone.

    Parameters
    ----------
    csv
        ``benchmarks/results/gpu_tasks.csv``: device, date, task, arch, phase, params, batch,
        tokens_per_s, items_per_s, peak_gib.
    out
        Figure path; ``.png`` and ``.pdf`` are written.

    Returns
    -------
    pandas.DataFrame
        The plotted rows: task, phase, arch, tokens_per_s, peak_gib, label (``task / phase``).
    """
    df = pd.read_csv(csv)
    need = ["device", "date", "task", "arch", "phase", "tokens_per_s", "peak_gib"]
    missing = [c for c in need if c not in df]
    if missing or df.empty:
        raise InputError(f"{csv}: expected rows with columns {need}" + (f"; lacks {missing}" if missing else ""))
    data = df.assign(label=df["task"].astype(str) + " / " + df["phase"].astype(str))[
        ["task", "phase", "arch", "tokens_per_s", "peak_gib", "label"]]
    groups = list(dict.fromkeys(data["label"]))
    archs = method_order(data["arch"])

    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(groups) * len(archs) / 2 + 2.2))
        height = 0.8 / len(archs)
        for ax, col, xlabel in zip(axes, ("tokens_per_s", "peak_gib"),
                                   ("throughput (M tokens / s, higher is better)",
                                    "peak GPU memory (GiB, lower is better)")):
            for k, arch in enumerate(archs):
                sub = data[data["arch"] == arch].set_index("label").reindex(groups)
                y = np.arange(len(groups))[::-1] + (len(archs) / 2 - k - 0.5) * height
                vals = sub[col].to_numpy(float) / (1e6 if col == "tokens_per_s" else 1.0)
                ax.barh(y, np.nan_to_num(vals), height=height, color=method_color(arch), label=arch)
                for yy, v in zip(y, vals):
                    if np.isfinite(v):
                        ax.text(v, yy, f" {v:.2f}", va="center", fontsize=7)
            ax.set_yticks(np.arange(len(groups))[::-1], groups if col == "tokens_per_s" else [""] * len(groups))
            ax.set_xlabel(xlabel)
            ax.set_xlim(0, np.nanmax(data[col]) / (1e6 if col == "tokens_per_s" else 1.0) * 1.25)
            ax.grid(axis="x", alpha=0.3)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, title="backbone")
        dev = ", ".join(dict.fromkeys(df["device"].astype(str)))
        date = ", ".join(dict.fromkeys(df["date"].astype(str)))
        _finish(fig, f"Task fine-tuning / prediction throughput (same-size backbones); {dev}, {date}", bottom=0.7)
        save_figure(fig, out)
    return data.reset_index(drop=True)


# --- tables for the report ------------------------------------------------------------------
def _inline(text: str) -> str:
    import html
    import re

    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def table_html(md_path: str | os.PathLike, out: str | os.PathLike) -> str:
    """Render a benchmark table's Markdown (:func:`cellmamba.metrics.tables.render_markdown`) as a
    standalone HTML page for the workflow report; returns the HTML.

    Only the Markdown that ``render_markdown`` writes is handled (headings, pipe tables, bullet
    lists, paragraphs, bold); a Markdown library would do more, but none is a dependency.
    """
    lines = Path(md_path).read_text().splitlines()
    if not lines or not lines[0].startswith("#"):
        raise InputError(f"{md_path}: expected a benchmark table in Markdown starting with '# <title>'")
    body, in_table, in_list = [], False, False
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            if not in_table:
                body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    body.append("</table>" if in_table else "</ul>" if in_list else "")
    css = ("body{font-family:sans-serif;font-size:14px}table{border-collapse:collapse;margin:8px 0}"
           "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th:first-child,td:first-child"
           "{text-align:left}th{background:#f0f0f0}")
    text = f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><style>{css}</style></head><body>\n" + \
        "\n".join(body) + "\n</body></html>\n"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text

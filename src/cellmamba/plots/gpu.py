"""GPU throughput figures: tokens/s and peak memory vs context length, and per task."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..errors import InputError
from .theme import finish_figure, method_color, method_order, save_figure, style

__all__ = ["throughput", "task_throughput"]


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
        finish_figure(fig, f"GPU throughput vs context length (log scale); {dev}, {date}", bottom=0.4)
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
        finish_figure(fig, f"Task fine-tuning / prediction throughput (same-size backbones); {dev}, {date}", bottom=0.7)
        save_figure(fig, out)
    return data.reset_index(drop=True)

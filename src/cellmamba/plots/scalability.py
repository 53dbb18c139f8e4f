"""Scalability figure (scMamba's runtime / memory figure): wall time and peak memory of the
multi-omics methods against the number of paired cells, one row of panels per device."""
from __future__ import annotations

import os

import pandas as pd

from ..errors import InputError
from .theme import finish_figure, method_color, method_order, save_figure, style

__all__ = ["scalability"]

#: line style per stage: the whole run (training + embedding; a baseline's fit) solid, embedding alone dashed
_STAGE_STYLE = {"train+embed": "-", "fit": "-", "embed": "--"}
_NEED = ["method", "n_cells", "stage", "wall_s", "peak_host_gib", "peak_gpu_gib", "device", "date", "epochs"]


def scalability(csv: str | os.PathLike, out: str | os.PathLike) -> pd.DataFrame:
    """Wall time (left) and peak memory (right: GPU where measured, else host) vs cells, log-log.

    Parameters
    ----------
    csv
        Rows of ``benchmarks/bench_scalability.py``: method, n_cells, stage (train+embed / embed /
        fit), wall_s, peak_host_gib, peak_gpu_gib (empty on CPU), device, date, epochs, ...
    out
        Figure path; ``.png`` and ``.pdf`` are written.

    Returns
    -------
    pandas.DataFrame
        The plotted rows: device, method, stage, n_cells, wall_s, memory_gib, memory (GPU / host).
    """
    df = pd.read_csv(csv)
    missing = [c for c in _NEED if c not in df]
    if missing:
        raise InputError(f"{csv}: lacks columns {missing}")
    if df.empty:
        raise InputError(f"{csv}: no measurement rows")
    unknown = sorted(set(df["stage"]) - set(_STAGE_STYLE))
    if unknown:
        raise InputError(f"{csv}: unknown stage(s) {unknown}; expected {sorted(_STAGE_STYLE)}")
    df = df.assign(memory_gib=df["peak_gpu_gib"].where(df["peak_gpu_gib"].notna(), df["peak_host_gib"]),
                   memory=["GPU" if pd.notna(g) else "host" for g in df["peak_gpu_gib"]])
    devices = list(dict.fromkeys(df["device"].astype(str)))

    import matplotlib.pyplot as plt

    with style():
        fig, axes = plt.subplots(len(devices), 2, squeeze=False, figsize=(10.4, 3.9 * len(devices)))
        for i, device in enumerate(devices):
            block = df[df["device"].astype(str) == device]
            for method in method_order(block["method"]):
                for stage, ls in _STAGE_STYLE.items():
                    sub = block[(block["method"] == method) & (block["stage"] == stage)].sort_values("n_cells")
                    if sub.empty:
                        continue
                    kw = {"marker": "o", "ms": 3, "ls": ls, "color": method_color(method), "label": f"{method}, {stage}"}
                    axes[i, 0].plot(sub["n_cells"], sub["wall_s"], **kw)
                    axes[i, 1].plot(sub["n_cells"], sub["memory_gib"], **kw)
            epochs = ", ".join(str(e) for e in dict.fromkeys(block["epochs"]))
            dates = ", ".join(dict.fromkeys(block["date"].astype(str)))
            memory = " / ".join(dict.fromkeys(block["memory"]))
            axes[i, 0].set(xscale="log", yscale="log", xlabel="paired cells", ylabel="wall time, s (lower is better)",
                           title=f"{device}, {dates}: training {epochs} epoch(s)")
            axes[i, 1].set(xscale="log", xlabel="paired cells", ylabel=f"peak {memory} memory, GiB (lower is better)",
                           title=f"{device}: peak memory of the process")
            for ax in axes[i]:
                ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
        finish_figure(fig, "Scalability of the multi-omics methods (recorded reference measurement)",
                      bottom=0.12 + 0.08 / len(devices))
        save_figure(fig, out)
    return df[["device", "method", "stage", "n_cells", "wall_s", "memory_gib", "memory"]].reset_index(drop=True)

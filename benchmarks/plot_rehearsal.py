"""Plot a rehearsal CSV (benchmarks/rehearse.py): GPU memory per job against the 72 GiB line, and
the projected wall time of each job. Usage: python benchmarks/plot_rehearsal.py RESULTS.csv"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

LINE_GIB = 72.0
CARD_GIB = 80e9 / 2**30  # an 80 GB card


def _label(r) -> str:
    # rows of a configuration that was then changed say so in their config column ("... (before)")
    before = "(before)" in str(r.get("config", "")) and r["rule"] != "pretrain"
    extra = " (before micro-batches)" if before else ""
    return f"{r['job']}{extra}, {int(r['micro_batch'])} x {int(r['grad_accum'])}"


def main(csv_path: str) -> Path:
    df = pd.read_csv(csv_path)
    df = df[df["status"].isin(["ok", "over_line"])].reset_index(drop=True)
    labels = [_label(r) for _, r in df.iterrows()]
    colors = ["tab:orange" if "transformer" in m else "tab:blue" for m in df["model"]]
    y = range(len(df))[::-1]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(13, 0.42 * len(df) + 1.6), sharey=True,
                                     gridspec_kw={"width_ratios": [1.3, 1]})
    ax_m.barh(list(y), df["peak_reserved_gib"], color=colors, alpha=0.3, label="reserved (allocator cache)")
    ax_m.barh(list(y), df["peak_alloc_gib"], color=colors, label="allocated")
    ax_m.axvline(LINE_GIB, color="k", ls="--", lw=1)
    ax_m.axvline(CARD_GIB, color="crimson", lw=1)
    ax_m.text(LINE_GIB, len(df) - 0.4, " 72 GiB line", fontsize=8, va="bottom")
    ax_m.text(CARD_GIB, -0.9, " 80 GB card", fontsize=8, color="crimson", va="top")
    ax_m.set(yticks=list(y), yticklabels=labels, xlabel="peak GPU memory (GiB)")
    ax_m.legend(loc="lower right", fontsize=8)
    ax_t.barh(list(y), df["projected_h"], color=colors)
    for yi, h in zip(y, df["projected_h"]):
        ax_t.text(h, yi, f" {h:.2f} h" if h < 10 else f" {h:.0f} h", va="center", fontsize=8)
    ax_t.set(xscale="log", xlabel="projected wall time of one job (h, log scale)")
    for ax in (ax_m, ax_t):
        ax.grid(axis="x", alpha=0.3)
    first = df.iloc[0]
    fig.suptitle(f"paper-size rehearsal, d512 x 24 layers, bf16: {first['device']}, {first['date']}, "
                 f"{first['kernels']} (blue: Mamba, orange: Transformer peers; micro-batch x accumulation)", fontsize=9)
    fig.tight_layout()
    out = Path(csv_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))

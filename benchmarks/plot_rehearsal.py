"""Plot a rehearsal CSV (benchmarks/rehearse.py): GPU memory per job against the 72 GiB line, and
the projected wall time of each job. Usage: python benchmarks/plot_rehearsal.py RESULTS.csv [OLDER.csv ...]

A job measured more than once is drawn from its newest row: the last row of the first file that
has it (later files fill in the jobs the first lacks). The figure goes beside the first file."""
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


def newest_rows(csv_path: str, *older: str) -> pd.DataFrame:
    """The ok / over-line rows to draw: each job's newest (the last row of the first file that has
    it); a fine-tuning row of a changed configuration ("(before)") stays as a row of its own (the
    memory before a fix), a pretraining row is superseded like any other."""
    frames = [pd.read_csv(p).assign(_file=i) for i, p in enumerate((csv_path, *older))]
    df = pd.concat(frames, ignore_index=True)
    df = df[df["status"].isin(["ok", "over_line"])]
    before = df.get("config", pd.Series("", index=df.index)).fillna("").str.contains("(before)", regex=False)
    df = df.assign(_key=df["job"] + (before & (df["rule"] != "pretrain")).map({True: " (before)", False: ""}))
    return (df.iloc[::-1].sort_values("_file", kind="stable").drop_duplicates("_key", keep="first")
            .sort_index().sort_values("_file", kind="stable").reset_index(drop=True))


def main(csv_path: str, *older: str) -> Path:
    df = newest_rows(csv_path, *older)
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
    dates = ", ".join(sorted(set(df["date"].astype(str))))
    fig.suptitle(f"paper-size rehearsal, d512 x 24 layers, bf16: {first['device']}, {dates}, "
                 f"{first['kernels']}\n(blue: Mamba, orange: Transformer peers; micro-batch x accumulation)", fontsize=9)
    fig.tight_layout()
    out = Path(csv_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))

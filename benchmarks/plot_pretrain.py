"""Plot the recorded GPU pretraining curves (benchmarks/results/pretrain_<recipe>_<L>.csv)."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def main(results: str = "benchmarks/results") -> Path:
    files = sorted(p for p in Path(results).glob("pretrain_*_*.csv") if "ddp" not in p.name)
    cols = 3
    rows = -(-len(files) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.3 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(files):]:
        ax.axis("off")
    for ax, path in zip(axes, files):
        m = pd.read_csv(path)
        ax.plot(m["step"], m["loss"], marker=".")
        tok = m.loc[m["step"] > 20, "tokens_per_s"].median()
        ax.set(title=f"{m['recipe'][0]}, L={m['L'][0]:,}\n{tok / 1e6:.2f} M tokens/s, {m['params'][0] / 1e6:.1f}M params",
               xlabel="step", ylabel="training loss")
        ax.grid(alpha=0.3)
    fig.suptitle(f"pretraining on 100k generated cells, d512 x 6, bf16; {m['device'][0]}, {m['date'][0]}", fontsize=9)
    fig.tight_layout()
    out = Path(results) / "pretrain_curves.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))

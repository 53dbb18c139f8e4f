"""Plot benchmarks/results/gpu_throughput.csv: training and forward tokens/s vs context length."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def main(csv: str = "benchmarks/results/gpu_throughput.csv") -> Path:
    df = pd.read_csv(csv)
    df = df[df["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, mode in zip(axes, ("train", "forward")):
        for model, sub in df[df["mode"] == mode].groupby("model"):
            sub = sub.sort_values("L")
            ax.plot(sub["L"], sub["tokens_per_s"] / 1e6, marker="o", label=f"{model} ({sub['params'].iloc[0] / 1e6:.1f}M)")
        if mode == "train":
            ax.axhline(1.0, color="grey", ls="--", lw=1, label="target (BiMamba2 training)")
        ax.set(xscale="log", xlabel="context length L (tokens)", ylabel="M tokens / s",
               title=f"{'training (fwd+bwd+AdamW)' if mode == 'train' else 'forward only'}, bf16")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    dev, date = df["device"].iloc[0], df["date"].iloc[0]
    fig.suptitle(f"d_model 512 x 6 layers, max(65,536, L) tokens per step; {dev}, {date}", fontsize=10)
    fig.tight_layout()
    out = Path(csv).with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))

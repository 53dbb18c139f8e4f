"""Plot the positive control for pretraining (benchmarks/positive_control.py): query accuracy and
macro F1 against the fraction of labelled reference cells (log x), one panel per readout
(fine-tuned, linear probe), one line per recipe x init (pretrained solid, scratch dashed),
logistic regression on the genes in grey, mean +- sd over seeds.

    python benchmarks/plot_positive_control.py results/positive_control_<device>_<date>.csv [more.csv] [--out PNG]

Several CSVs (e.g. one per recipe, run as separate commands) are drawn as one figure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

METRICS = {"accuracy": "query accuracy", "f1_macro": "query macro F1"}
READOUTS = {"finetune": "fine-tuned (whole model + classifier)", "probe": "linear probe of the frozen embeddings"}


def _colour(recipe: str) -> str:
    from cellmamba.plots.theme import method_color

    return method_color(recipe)


def plot(csvs, out: str | Path) -> Path:
    """Draw the CSVs' rows into ``out`` (PNG): one column of panels per readout (fine-tuned,
    probed), one row per metric; returns its path."""
    table = pd.concat([pd.read_csv(c) for c in csvs], ignore_index=True)
    summary = (table.groupby(["recipe", "init", "readout", "label_fraction"], sort=False)
               .agg(n_labelled=("n_labelled", "median"), **{f"{m}_mean": (m, "mean") for m in METRICS},
                    **{f"{m}_sd": (m, "std") for m in METRICS}, seeds=("seed", "nunique"))
               .reset_index().sort_values("label_fraction"))
    readouts = [r for r in READOUTS if r in set(summary["readout"])]
    baseline = summary[summary["readout"] == "genes"]
    fractions = sorted(summary["label_fraction"].unique())
    labelled = summary.groupby("label_fraction")["n_labelled"].median()
    fig, axes = plt.subplots(len(METRICS), len(readouts), figsize=(5.0 * len(readouts), 3.4 * len(METRICS)),
                             squeeze=False, sharex=True)
    for col, readout in enumerate(readouts):
        for row, metric in enumerate(METRICS):
            ax = axes[row][col]
            lines = summary[summary["readout"] == readout]
            for (recipe, init), g in pd.concat([lines, baseline]).groupby(["recipe", "init"], sort=False):
                genes = init == "baseline"
                ax.errorbar(g["label_fraction"], g[f"{metric}_mean"], yerr=g[f"{metric}_sd"].fillna(0.0),
                            color="#7F7F7F" if genes else _colour(recipe), linestyle="--" if init == "scratch" else "-",
                            marker="s" if genes else ("o" if init == "pretrained" else "^"), markersize=4, capsize=3,
                            linewidth=1.4, label=f"{recipe} on genes" if genes else f"{recipe} {init}")
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{f:.0%}\n(n={int(labelled[f])})" for f in fractions])
            ax.minorticks_off()
            ax.set(ylabel=METRICS[metric], ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(READOUTS[readout])
            if row == len(METRICS) - 1:
                ax.set_xlabel("labelled reference cells")
    axes[0][0].legend(fontsize=7, loc="best")
    models = table[table["readout"] != "genes"]
    first = (models if len(models) else table).iloc[0]
    seeds = int(summary["seeds"].max())
    title = f"positive control for pretraining: {first['device']}, {first['date']}, {first['size']} size"
    if len(models):
        title += (f"; d{first['d_model']:.0f} x {first['n_layers']:.0f}, {first['corpus_cells']:,.0f} corpus cells, "
                  f"{first['pretrain_steps']:,.0f} pretraining steps")
    fig.suptitle(f"{title}; mean +- sd of {seeds} seed(s)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="PNG (default: the first CSV's name with .png)")
    a = ap.parse_args(argv)
    out = plot(a.csv, a.out or a.csv[0].with_suffix(".png"))
    print(out)
    return out


if __name__ == "__main__":
    main()

"""Does the adversarial batch term act? Integration fine-tuning on simulated cells with a strong
batch effect, the reversal off (``adversarial_weight`` 0: the discriminator trains, the encoder
gets no adversarial gradient) and on, on the CPU with a tiny model.

Per run (one row of the CSV): the discriminator's training loss at the start and the end
(means of the first / last ``--window`` optimizer steps of metrics.csv; chance is
ln(n_batches)), and a linear probe of the batch (and of the cell type) from the returned
embeddings of all cells (standardised, multinomial logistic regression, 5-fold stratified
cross-validated accuracy; chance 1 / n_batches). The model is a fresh pretraining model
(randomly initialised, saved as a pretrained one): what is measured is the fine-tuning's
adversarial game, not what pretraining taught.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adversarial_cpu.py \\
        --out benchmarks/results/adversarial_cpu_2026-12-02.csv

Settings a FinetuneConfig does not have (an older checkout) are left out of it, so the same
script measures the code before a change (``--label`` names the rows).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FIELDS = ["label", "recipe", "d_model", "n_layers", "seed", "n_cells", "n_genes", "n_batches", "batch_effect_sd", "epochs", "steps", "lr",
          "adversarial_weight", "adversarial_schedule", "adversarial_lr_scale", "adv_loss_first", "adv_loss_last",
          "ln_n_batches", "batch_acc_last", "probe_batch", "probe_cell_type", "probe_chance", "seconds", "machine"]


def simulated_cells(*, n_cells: int, n_genes: int, n_batches: int, batch_effect_sd: float, seed: int):
    """(AnnData, vocabulary): ``simulate_integration`` on 4 random cell-type profiles over
    ``n_genes`` genes, and a vocabulary of exactly those genes."""
    from cellmamba.datasets import simulate_integration

    rng = np.random.default_rng([seed, 11])
    genes = [f"G{i}" for i in range(n_genes)]
    profiles = pd.DataFrame(rng.dirichlet(np.full(n_genes, 0.5), size=4), index=[f"t{i}" for i in range(4)],
                            columns=genes)
    adata = simulate_integration(n_cells=n_cells, n_batches=n_batches, seed=seed, profiles=profiles,
                                 batch_effect_sd=batch_effect_sd, library_size=500.0)
    vocab = pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(n_genes)], "feature_name": genes,
                          "nonzero_median": np.full(n_genes, 2.0)})
    return adata, vocab


def tiny_model(directory: Path, recipe: str, n_genes: int, *, d_model: int = 32, n_layers: int = 2,
               seed: int = 0) -> Path:
    """A freshly initialised pretraining model of ``recipe`` saved as a pretrained one."""
    import torch

    from cellmamba.train.pretrain import PretrainConfig, build_pretrain_model

    torch.manual_seed(seed)
    model = build_pretrain_model(PretrainConfig(recipe=recipe, backbone="bimamba_mamba2", d_model=d_model,
                                                n_layers=n_layers, backend="torch"), n_genes=n_genes)
    return Path(model.save_pretrained(directory))


def probe_accuracy(emb: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """5-fold stratified cross-validated accuracy of a logistic regression on standardised ``emb``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, emb, labels, cv=folds).mean())


def finetune_config(**settings):
    """A FinetuneConfig of the ``settings`` it has (an older one lacks some)."""
    from cellmamba.tasks import FinetuneConfig

    have = {f.name for f in dataclasses.fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in settings.items() if k in have})


def run_one(adata, vocab, model_dir: Path, out_dir: Path, *, weight: float, args) -> dict:
    """One integration fine-tuning with reversal weight ``weight``: the row of the CSV."""
    from cellmamba.tasks import run_integration

    cfg = finetune_config(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_len=args.genes + 1,
                          backend="torch", seed=args.seed, keep_best=False, adversarial_weight=weight,
                          adversarial_schedule=args.schedule, adversarial_lr_scale=args.lr_scale)
    t0 = time.perf_counter()
    emb = run_integration(adata, model_dir, vocab, config=cfg, out_dir=out_dir)
    seconds = time.perf_counter() - t0
    metrics = pd.read_csv(out_dir / "metrics.csv")
    adv = metrics["adv_loss"].to_numpy() if "adv_loss" in metrics else np.full(len(metrics), np.nan)
    acc = metrics["batch_acc"].to_numpy() if "batch_acc" in metrics else np.full(len(metrics), np.nan)
    w = args.window
    batches = adata.obs["batch"].astype(str).to_numpy()
    n_batches = len(set(batches))
    return {"recipe": args.recipe, "d_model": args.d_model, "n_layers": args.layers, "seed": args.seed,
            "n_cells": adata.n_obs, "n_genes": args.genes, "n_batches": n_batches,
            "batch_effect_sd": args.batch_effect_sd, "epochs": args.epochs, "steps": int(metrics["step"].iloc[-1]),
            "lr": args.lr, "adversarial_weight": weight,
            "adversarial_schedule": getattr(cfg, "adversarial_schedule", "constant"),
            "adversarial_lr_scale": getattr(cfg, "adversarial_lr_scale", 1.0),
            "adv_loss_first": round(float(np.mean(adv[:w])), 4), "adv_loss_last": round(float(np.mean(adv[-w:])), 4),
            "ln_n_batches": round(math.log(n_batches), 4), "batch_acc_last": round(float(np.mean(acc[-w:])), 4),
            "probe_batch": round(probe_accuracy(emb, batches, seed=args.seed), 4),
            "probe_cell_type": round(probe_accuracy(emb, adata.obs["cell_type"].astype(str).to_numpy(),
                                                    seed=args.seed), 4),
            "probe_chance": round(1.0 / n_batches, 4), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="scmamba2", choices=["scmamba2", "genemamba"])
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--genes", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-effect-sd", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0],
                    help="reversal weights to run (0 = reversal off, the discriminator still trains)")
    ap.add_argument("--schedule", default="dann")
    ap.add_argument("--lr-scale", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=3, help="metrics.csv rows averaged for first / last")
    ap.add_argument("--label", default="", help="names the rows (e.g. before / after a change)")
    ap.add_argument("--out", type=Path, help="CSV to append the rows to (written with a header if new)")
    ap.add_argument("--work", type=Path, help="where the runs write (default: a temporary directory)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="adversarial_cpu_"))
    adata, vocab = simulated_cells(n_cells=args.cells, n_genes=args.genes, n_batches=args.batches,
                                   batch_effect_sd=args.batch_effect_sd, seed=args.seed)
    model_dir = tiny_model(work / "pretrained", args.recipe, args.genes, d_model=args.d_model, n_layers=args.layers,
                           seed=args.seed)
    rows = []
    for weight in args.weights:
        row = {"label": args.label, **run_one(adata, vocab, model_dir, work / f"w{weight:g}", weight=weight, args=args),
               "machine": f"{platform.machine()} CPU, torch {torch.__version__}"}
        rows.append(row)
        print(", ".join(f"{k}={row[k]}" for k in ("label", "recipe", "adversarial_weight", "adv_loss_first",
                                                  "adv_loss_last", "ln_n_batches", "probe_batch", "probe_cell_type",
                                                  "seconds")), flush=True)
    if args.out:
        new = not args.out.is_file()
        with open(args.out, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

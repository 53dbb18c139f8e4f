"""Scalability of the multi-omics methods (scMamba's runtime / memory figure): wall time and peak
memory of training and of embedding against the number of paired cells, for the two-tower
methods (scmamba, scmamba_bimamba, scmamba_transformer) and the PCA + CCA baseline.

The cells are the demo's simulated paired RNA + ATAC (:func:`cellmamba.datasets.readers.read_sim_multiome`,
the registry's ``sim_multiome`` entry) at each size; the towers take their sizes and training
settings from a workflow config, as the ``train_multiomics`` rule does (``--config``; the demo's
by default, config/paper.yaml for the paper's towers). Training runs ``--epochs`` passes (1 by
default: a run's time is this times its epochs). Every (method, cells) point runs in a process of
its own, so its peak resident memory is its own; on a GPU the peak allocated GPU memory is
recorded as well.

Rows (CSV, appended per point so an interrupted sweep keeps what it measured): method, n_cells,
stage (``train+embed``: the whole run as the rule runs it; ``embed``: embedding every cell with the
trained towers; ``fit``: the baseline), wall_s, cells_per_s, peak_host_gib, peak_gpu_gib (empty
on CPU), device, date, commit, config, epochs, n_features, n_patches, n_params.

Usage:
    python benchmarks/bench_scalability.py --sizes 1000 3000 10000 --out benchmarks/results/scalability_cpu_<date>.csv
    python benchmarks/bench_scalability.py --config config/paper.yaml --sizes 10000 30000 100000 300000 \\
        --out benchmarks/results/scalability_<device>_<date>.csv        # on the GPU
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
#: the rna tower's genomic order: the hg38 table the simulator placed the genes with
POSITIONS = REPO / "resources/genes/human_gene_positions_hg38.tsv.gz"

TOWERS = {"scmamba": "mamba2", "scmamba_bimamba": "bimamba_mamba2", "scmamba_transformer": "transformer"}
BASELINES = ("pca_cca",)
METHODS = tuple(TOWERS) + BASELINES
COLUMNS = ["method", "n_cells", "stage", "wall_s", "cells_per_s", "peak_host_gib", "peak_gpu_gib", "device", "date",
           "commit", "config", "epochs", "n_features", "n_patches", "n_params"]


def dataset(n_cells: int, seed: int = 0):
    """The demo's simulated paired RNA + ATAC at ``n_cells`` cells, read as the workflow reads it."""
    import yaml

    from cellmamba.datasets.readers import read_sim_multiome

    entry = yaml.safe_load((REPO / "config/datasets.yaml").read_text())["datasets"]["sim_multiome"]
    files = {k: REPO / v["path"] for k, v in entry["files"].items()}
    options = {**entry.get("options", {}), "n_cells": int(n_cells), "seed": seed}
    return read_sim_multiome(files, keys=entry["keys"], **options)


def tower_config(config_path: Path, method: str, epochs: int, backend: str):
    """MultiomicsConfig of ``method`` from a workflow config (rules/common_evaluation.smk's
    multiomics_settings: models.scmamba sizes, tokenize.patch.patch_size, evaluation.multiomics.train)."""
    import yaml

    from cellmamba.tasks.multiomics import MultiomicsConfig

    cfg = yaml.safe_load(config_path.read_text())
    m = cfg["models"]["scmamba"]
    train = {k: v for k, v in cfg["evaluation"]["multiomics"]["train"].items() if k != "backend"}
    settings = {**train, "arch": TOWERS[method], "d_model": m["d_model"], "n_layers": m["n_layers"],
                "patch_size": cfg["tokenize"]["patch"]["patch_size"], "seed": 0, "epochs": epochs, "backend": backend}
    for key in ("d_state", "merge", "merge_every"):
        if m.get(key) is not None:
            settings[key] = m[key]
    return MultiomicsConfig.from_dict(settings)


def _peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(method: str, n_cells: int, *, config_path: Path, epochs: int, backend: str) -> list[dict]:
    """One point, in this process: the method's stages on ``n_cells`` cells (rows without the
    run's identity columns)."""
    import torch

    adata = dataset(n_cells)
    cuda = torch.cuda.is_available()
    rows = []

    def row(stage, wall, **extra):
        gpu = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        return {"method": method, "n_cells": n_cells, "stage": stage, "wall_s": round(wall, 3),
                "cells_per_s": round(n_cells / wall, 1), "peak_host_gib": round(_peak_host_gib(), 3),
                "peak_gpu_gib": None if gpu is None else round(gpu, 3), **extra}

    if method in BASELINES:
        from cellmamba.baselines.multiomics import run_multiomics_baseline

        t0 = time.perf_counter()
        out = run_multiomics_baseline(adata, method=method)
        rows.append(row("fit", time.perf_counter() - t0, n_features=json.dumps(out["n_features"])))
        return rows

    from cellmamba.models.two_tower import TwoTowerModel
    from cellmamba.tasks.multiomics import embed_modalities, prepare_modalities, run_multiomics

    config = tower_config(config_path, method, epochs, backend)
    with tempfile.TemporaryDirectory() as tmp:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = run_multiomics(adata, config=config, out_dir=Path(tmp) / "run", positions=POSITIONS)
        if cuda:
            torch.cuda.synchronize()
        extra = {"n_features": json.dumps(result.n_features), "n_patches": json.dumps(result.n_patches),
                 "n_params": json.dumps(result.n_params)}
        rows.append(row("train+embed", time.perf_counter() - t0, **extra))
        data = prepare_modalities(adata, POSITIONS, config=config)
        model = TwoTowerModel.from_pretrained(Path(tmp) / "run" / "model")
        device = torch.device("cuda" if cuda else "cpu")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        embed_modalities(model, data, batch_size=config.embed_batch_size, device=device, precision=config.precision)
        if cuda:
            torch.cuda.synchronize()
        rows.append(row("embed", time.perf_counter() - t0, **extra))
    return rows


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 3000, 10000])
    p.add_argument("--config", type=Path, default=REPO / "config/config.yaml",
                   help="workflow config whose tower sizes and training settings are used")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--backend", default="auto", help="SSM kernels of the towers (auto | torch | cuda | triton)")
    p.add_argument("--out", type=Path, required=True, help="CSV, appended per point")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "N_CELLS"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.one:
        rows = measure(args.one[0], int(args.one[1]), config_path=args.config, epochs=args.epochs,
                       backend=args.backend)
        print("ROWS " + json.dumps(rows))
        return 0
    for bad in [n for n in args.sizes if n < 2]:
        p.error(f"--sizes: {bad} cells; contrastive training needs at least 2")
    identity = {"device": _device_name(), "date": dt.date.today().isoformat(), "commit": _commit(),
                "config": os.path.relpath(args.config.resolve(), REPO), "epochs": args.epochs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new = not args.out.exists()
    with args.out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        for n in sorted(args.sizes):
            for method in args.methods:
                cmd = [sys.executable, __file__, "--one", method, str(n), "--config", str(args.config),
                       "--epochs", str(args.epochs), "--backend", args.backend, "--out", str(args.out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
                if proc.returncode != 0 or not lines:
                    print(f"{method} at {n} cells failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                for r in json.loads(lines[-1][5:]):
                    writer.writerow({**r, **identity})
                    print(f"{method:20s} {n:>8d} cells {r['stage']:12s} {r['wall_s']:9.2f} s "
                          f"{r['peak_host_gib']:6.2f} GiB host" + (f" {r['peak_gpu_gib']:6.2f} GiB GPU"
                                                                   if r["peak_gpu_gib"] is not None else ""), flush=True)
                fh.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

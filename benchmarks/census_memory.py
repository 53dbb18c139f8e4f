"""Peak memory of one census shard download job as the shard grows (chunk size fixed).

Builds local Census-shaped stores of increasing size (generated counts, ``--genes`` genes,
about ``--nnz-per-cell`` non-zeros per cell), plans each into ONE shard (so the shard is the
whole store), and runs :func:`cellmamba.census.download_shard` in a fresh subprocess whose
peak RSS (``VmHWM`` of /proc/self/status, Linux) and wall time are recorded. With streaming, peak RSS stays flat as the
shard grows; a last row downloads the largest store in a single chunk, to show what the
measurement sees when memory does grow with the shard.

    nice -n 10 .venv/bin/python benchmarks/census_memory.py --out benchmarks/results/census_memory.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger("census_memory")

_CHILD = r"""
import json, sys, time
from cellmamba.census import CensusConfig, download_shard
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
download_shard(CensusConfig(**args["config"]), args["plan"], 0, args["out"])
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec, so it would report the
# parent benchmark's own (store-building) peak; VmHWM belongs to this process image only
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": hwm_kb / 1024, "seconds": seconds}))
"""


def generated_datasets(n_cells: int, *, n_genes: int, nnz_per_cell: int, cells_per_dataset: int = 4096, seed: int = 0):
    """``dataset_id -> AnnData`` of generated integer counts (var = ``ENSG...`` ids 0..n_genes-1)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    ids = np.array([f"ENSG{j:011d}" for j in range(n_genes)])
    out = {}
    for k, start in enumerate(range(0, n_cells, cells_per_dataset)):
        n = min(cells_per_dataset, n_cells - start)
        cols = rng.integers(0, n_genes, size=(n, nnz_per_cell))
        rows = np.repeat(np.arange(n), nnz_per_cell)
        vals = rng.geometric(0.4, size=n * nnz_per_cell).astype(np.float32)
        X = sp.csr_matrix((vals, (rows, cols.ravel())), shape=(n, n_genes))
        X.sum_duplicates()
        out[f"dataset_{k}"] = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{start + i}" for i in range(n)]),
                                         var=pd.DataFrame(index=ids))
    return out


def measure(n_cells: int, chunk_cells: int, workdir: Path, *, n_genes: int, nnz_per_cell: int) -> dict:
    """Build a store of ``n_cells``, plan one shard, download it in a subprocess; return the figures."""
    import pandas as pd

    from cellmamba.census import CensusConfig, plan_census
    from cellmamba.census_store import build_local_census

    store = workdir / f"store_{n_cells}"
    if not store.exists():
        genes = pd.DataFrame({"feature_id": [f"ENSG{j:011d}" for j in range(n_genes)],
                              "feature_name": [f"G{j}" for j in range(n_genes)], "feature_length": 1000})
        build_local_census(generated_datasets(n_cells, n_genes=n_genes, nnz_per_cell=nnz_per_cell), store,
                           gene_table=genes)
    config = {"uri": str(store), "n_shards": 1, "chunk_cells": chunk_cells, "obs_columns": ["cell_type"]}
    plan = workdir / f"plan_{n_cells}.parquet"
    plan_census(CensusConfig(**config), plan)
    out = workdir / f"shard_{n_cells}_{chunk_cells}.h5ad"
    args = json.dumps({"config": config, "plan": str(plan), "out": str(out)})
    done = subprocess.run([sys.executable, "-c", _CHILD, args], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out.unlink()
    return {"n_cells": n_cells, "chunk_cells": chunk_cells, "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "seconds": round(result["seconds"], 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--chunk-cells", type=int, default=1024)
    parser.add_argument("--genes", type=int, default=5000)
    parser.add_argument("--nnz-per-cell", type=int, default=1000)
    parser.add_argument("--date", default="2026-11-23")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/census_memory.csv"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    machine = f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} (CPU only)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="census_memory_") as tmp:
        runs = [(n, args.chunk_cells) for n in args.sizes] + [(max(args.sizes), max(args.sizes))]
        for n_cells, chunk in runs:
            row = measure(n_cells, chunk, Path(tmp), n_genes=args.genes, nnz_per_cell=args.nnz_per_cell)
            row.update(machine=machine, date=args.date)
            logger.info("%s", row)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["n_cells", "chunk_cells", "peak_rss_mb", "seconds", "machine", "date"])
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

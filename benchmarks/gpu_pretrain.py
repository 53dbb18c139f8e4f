"""Pretraining on a GPU at scale: a generated corpus of >= 100k cells (the tokenizer benchmark's
negative-binomial model, 20,000 genes, ~1,950 non-zeros per cell), tokenized into shards in
parallel, then scmamba2 / genemamba pretraining runs of a fixed number of steps each.

    python benchmarks/gpu_pretrain.py --work /tmp/gpu --cells 100000 --shards 8 \
        --run scmamba2:2048:600 --run genemamba:2048:300 --out OUTDIR

``--run recipe:L:steps[:zeros_ratio[:backbone]]`` (backbone default bimamba_mamba2; "transformer" =
the recipe's same-size Transformer peer); each run's metrics.csv is copied to
OUTDIR/pretrain_<recipe>[_transformer]_<L>.csv with device, date, parameter count and an MFU estimate
(6 x parameters x tokens/s over the GPU's dense bf16 peak; the SSM scan's own FLOPs are
left out, so it is a lower bound for Mamba).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokenizers import N_GENES, _generate  # noqa: E402  (the same corpus model as the CPU benchmark)

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM datasheets)


def _make_shard(args):
    i, n, work, gene_stats = args
    import anndata

    from cellmamba.tokenize import tokenize_h5ad

    if hasattr(anndata.settings, "allow_write_nullable_strings"):  # pandas >= 3 infers string arrays
        anndata.settings.allow_write_nullable_strings = True

    ids = np.array([f"ENSG{j:011d}" for j in range(N_GENES)])
    h5 = work / f"qc_{i}.h5ad"
    if not h5.exists():
        _generate(n, h5, ids, seed=1000 + i)
    for tok in ("binned", "rank"):
        out = work / "tokens" / tok / str(i)
        if not out.exists():
            settings = {"max_len": 20000} if tok == "binned" else {"max_len": 2048}
            tokenize_h5ad(h5, out, tokenizer=tok, config=settings,
                          gene_stats=gene_stats if tok == "rank" else None, chunk_cells=4096)
    return i


def build_corpus(work: Path, n_cells: int, n_shards: int, gene_stats: Path) -> dict[str, Path]:
    from cellmamba.tokenize import write_corpus_manifest

    work.mkdir(parents=True, exist_ok=True)
    per = -(-n_cells // n_shards)
    jobs = [(i, min(per, n_cells - i * per), work, gene_stats) for i in range(n_shards)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=min(n_shards, os.cpu_count() or 1)) as ex:
        list(ex.map(_make_shard, jobs))
    manifests = {}
    for tok in ("binned", "rank"):
        manifests[tok] = work / "tokens" / tok / "manifest.json"
        write_corpus_manifest([work / "tokens" / tok / str(i) for i in range(n_shards)], manifests[tok])
    print(f"corpus: {n_cells} cells in {n_shards} shards, {time.perf_counter() - t0:.0f} s", flush=True)
    return manifests


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--gene-stats", type=Path, required=True, help="gene_stats.tsv of the generated gene ids")
    p.add_argument("--run", action="append", default=[], help="recipe:L:steps[:zeros_ratio]")
    p.add_argument("--batch-tokens", type=int, default=65536, help="cells per step = batch_tokens // L")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.run and args.out is None:
        p.error("--run needs --out")

    import pandas as pd
    import torch

    from cellmamba.models import count_parameters
    from cellmamba.runlog import setup_logging
    from cellmamba.train.pretrain import PretrainConfig, run_pretraining

    setup_logging(None)
    manifests = build_corpus(args.work, args.cells, args.shards, args.gene_stats)
    if not args.run:
        return
    device = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in device), None)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.run:
        recipe, L, steps, *rest = spec.split(":")
        L, steps = int(L), int(steps)
        zeros = float(rest[0]) if rest else 0.0
        backbone = rest[1] if len(rest) > 1 else "bimamba_mamba2"
        name = recipe + ("_transformer" if backbone == "transformer" else "")
        cfg = PretrainConfig(recipe=recipe, d_model=512, n_layers=6, context_length=L,
                             batch_size=max(1, args.batch_tokens // L), max_steps=steps, lr=3e-4,
                             warmup_steps=min(100, steps // 10), checkpoint_every=max(steps // 2, 1), log_every=10,
                             pathway_weight=0.0, zeros_ratio=zeros, backend="cuda", backbone=backbone)
        run_dir = args.work / f"run_{name}_{L}"
        t0 = time.perf_counter()
        state = run_pretraining(manifests["binned" if recipe == "scmamba2" else "rank"], run_dir, config=cfg)
        wall = time.perf_counter() - t0
        from cellmamba.models import CellModel

        n_params = count_parameters(CellModel.from_pretrained(run_dir / "model"))
        m = pd.read_csv(run_dir / "metrics.csv")
        steady = m[m["step"] > max(20, steps // 5)]
        tok_s = float(steady["tokens_per_s"].median())
        m["device"], m["date"], m["params"], m["L"], m["recipe"] = device, dt.date.today().isoformat(), n_params, L, name
        m["zeros_ratio"] = zeros
        m["mfu_lower_bound"] = 6 * n_params * m["tokens_per_s"] / peak if peak else float("nan")
        m.to_csv(args.out / f"pretrain_{name}_{L}.csv", index=False)
        print(json.dumps({"recipe": name, "L": L, "steps": state.step, "wall_s": round(wall), "params": n_params,
                          "median_tokens_per_s": round(tok_s), "mfu_lower_bound": round(6 * n_params * tok_s / peak, 4) if peak else None,
                          "first_loss": float(m["loss"].iloc[0]), "last_loss": float(m["loss"].iloc[-1]),
                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}), flush=True)
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()

"""End-to-end pretraining throughput (issue 23): real tokens per second of `run_pretraining`,
against the same model and objective on batches already on the device, and against the bare
backbone with nothing padded, at one shape; host synchronisations per training step; embedding
throughput (`cellmamba.embed`) in cells per second.

    python benchmarks/bench_pretrain_e2e.py --work /tmp/e2e --cells 20000 --run scmamba2 \
        --run scmamba2:transformer --run genemamba --out results/pretrain_e2e_<device>_<date>.csv
    # CPU smoke (the test): --device cpu --cells 64 --shards 2 --d-model 16 --layers 1 --batch 4 --steps 3

The corpus is generated (the tokenizer benchmark's negative-binomial model: 20,000 genes, ~1,950
expressed per cell, a log-normal library size), QC-shaped shards in parallel, gene statistics
over them (`cellmamba.genestats`), then binned tokens (max_len 20,000: every expressed gene, so a
cell's length is its expressed-gene count) and rank tokens (top 2,048). ``--run
recipe[:transformer]`` (genemamba: masked-gene objective, no pathway loss) gives these rows
(``arm``):

- ``loop``: `run_pretraining` itself (loader workers, page-locked batches): the median of
  metrics.csv's real tokens/s over the rows after the first fifth of the steps;
- ``in_memory``: the same model, objective and optimizer on the loop's first batches, moved to
  the device beforehand, `train_step` back to back (timed with one synchronisation at the end):
  what the step costs without the loader and the loop around it;
- ``syncs``: host synchronisations per `train_step` there (``torch.cuda.set_sync_debug_mode``
  warnings, with the source lines that cause them);
- ``bare_full``: the backbone alone on random embeddings, the batch's cells at their mean length,
  nothing padded (the shape the issue's target compares with), forward + backward + AdamW;
- ``embed``: `cellmamba.embed` of ``--embed-cells`` generated cells with the run's model.

Options that vary the arms: ``--distinct`` (in_memory: as many different batches as steps,
not the first 32 over and over: every step a new padded length, as in the loop), ``--no-cudnn-sdp``
(attention without PyTorch's cuDNN backend), ``--pad-to-multiple`` (PretrainConfig's: fewer
distinct batch shapes), ``--max-tokens-per-pass`` (a step's cells in passes of a token budget),
``--micro-batch`` (cells per pass; the batch by
accumulation, as paper.yaml's micro_batch_size). Each is named in the row's ``variant``.

Columns: recipe, backbone, arm, variant, d_model, layers, context, batch (cells per optimizer
step), grad_accum, steps, real_tokens_per_s, cells_per_s, syncs_per_step, sync_sources, peak_gib,
code, device, date.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tokenizers import N_GENES, _generate  # noqa: E402  (the same corpus model as the CPU benchmark)

FIELDS = ["recipe", "backbone", "arm", "variant", "d_model", "layers", "context", "batch", "grad_accum", "steps",
          "real_tokens_per_s",
          "cells_per_s", "syncs_per_step", "sync_sources", "peak_gib", "code", "device", "date"]
CONTEXT = {"scmamba2": 20000, "genemamba": 2048}


def _ids() -> np.ndarray:
    return np.array([f"ENSG{j:011d}" for j in range(N_GENES)])


def _qc_shard(args) -> Path:
    i, n, work = args
    path = work / f"qc_{i}.h5ad"
    if not path.exists():
        _generate(n, path, _ids(), seed=1000 + i)
    return path


def _tokenize(args) -> None:
    from cellmamba.tokenize import tokenize_h5ad

    path, out, tok, gene_stats = args
    if not out.exists():
        tokenize_h5ad(path, out, tokenizer=tok, config={"max_len": CONTEXT["scmamba2" if tok == "binned" else "genemamba"]},
                      gene_stats=gene_stats if tok == "rank" else None, chunk_cells=4096)


def build_corpus(work: Path, n_cells: int, n_shards: int) -> tuple[dict[str, Path], Path]:
    """Generated QC shards -> gene_stats.tsv -> binned and rank token corpora (manifest paths)."""
    from cellmamba.genestats import compute_gene_stats
    from cellmamba.tokenize import write_corpus_manifest

    work.mkdir(parents=True, exist_ok=True)
    per = -(-n_cells // n_shards)
    jobs = [(i, min(per, n_cells - i * per), work) for i in range(n_shards) if n_cells - i * per > 0]
    workers = min(len(jobs), os.cpu_count() or 1)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as ex:
        shards = list(ex.map(_qc_shard, jobs))
    stats = work / "gene_stats.tsv"
    if not stats.exists():
        compute_gene_stats(shards, stats)
    dirs = {tok: [work / "tokens" / tok / str(i) for i in range(len(shards))] for tok in ("binned", "rank")}
    with ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(_tokenize, [(s, dirs[tok][i], tok, stats) for tok in dirs for i, s in enumerate(shards)]))
    manifests = {}
    for tok, parts in dirs.items():
        manifests[tok] = work / "tokens" / tok / "manifest.json"
        write_corpus_manifest(parts, manifests[tok])
    print(f"corpus: {n_cells} cells in {len(shards)} shards, {time.perf_counter() - t0:.0f} s", flush=True)
    return manifests, stats


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak(device) -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else float("nan")


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _step_kwargs(train_step) -> dict:
    import inspect

    # an older checkout's train_step reads every step (no read=): the A/B runs both
    return {"read": False} if "read" in inspect.signature(train_step).parameters else {}


def in_memory_arms(cfg, corpus: Path, *, device, steps: int, distinct: bool = False) -> tuple[dict, dict, int]:
    """(in_memory row, syncs row, the batches' mean cell length): train_step on the loader's first batches, moved to the device first."""
    import torch

    from cellmamba.train import pretrain as P
    from cellmamba.train.batches import batch_counts, to_device
    try:
        from cellmamba.train.batches import micro_batches
    except ImportError:  # an older checkout (A/B): its loader yields batches only
        def micro_batches(items):
            return list(items)
    from cellmamba.train.data import DataConfig, TokenDataset, build_dataloader
    from cellmamba.train.loop import train_step
    from cellmamba.train.schedule import build_optimizer

    dataset = TokenDataset(corpus, max_len=cfg.context_length, seed=cfg.seed)
    manifest = json.loads(Path(corpus).read_text())
    torch.manual_seed(cfg.seed)
    model = P.build_pretrain_model(cfg, n_genes=dataset.n_genes,
                                   n_bins=int(manifest.get("settings", {}).get("n_bins", 51))).to(device)
    objective = P._objective(cfg, vocabulary=None, gene_sets=())
    collator = P._collator(cfg, n_genes=dataset.n_genes, rank=0)
    if getattr(cfg, "max_tokens_per_pass", None):  # as run_pretraining: a step's cells in passes of the budget
        from cellmamba.train.data_collate import TokenBudget

        collator = TokenBudget(collator, cfg.max_tokens_per_pass)
    loader = build_dataloader(dataset, collator,
                              DataConfig(max_len=cfg.context_length, batch_size=cfg.batch_size, seed=cfg.seed))
    loader.set_epoch(0)
    batches, it = [], iter(loader)
    for _ in range((steps if distinct else min(steps, 32)) * cfg.grad_accum):
        try:
            batches.append(next(it))
        except StopIteration:
            break
    a = cfg.grad_accum
    # one optimizer step each: grad_accum loader items, an item a batch or a token budget's passes
    steps_of = [[to_device(b, device) for b in micro_batches(batches[i:i + a])]
                for i in range(0, len(batches) - a + 1, a)]
    batches = [b for m in steps_of for b in m]
    tokens = [sum(batch_counts(b)[1] for b in m) for m in steps_of]
    tc = cfg.to_train_config()
    optimizer = build_optimizer(model, tc)
    kw = _step_kwargs(train_step)
    _reset_peak(device)
    for i in range(3):  # warm-up: kernels compiled and autotuned
        train_step(model, objective, steps_of[i % len(steps_of)], optimizer=optimizer, config=tc, step=i, device=device, **kw)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(model, objective, steps_of[i % len(steps_of)], optimizer=optimizer, config=tc, step=i, device=device, **kw)
    _sync(device)
    wall = time.perf_counter() - t0
    row = {"arm": "in_memory", "steps": steps, "peak_gib": _peak(device),
           "real_tokens_per_s": round(sum(tokens[i % len(tokens)] for i in range(steps)) / wall)}
    syncs = {"arm": "syncs", "steps": 0, "syncs_per_step": float("nan")}
    if device.type == "cuda":
        n, sources = 4, {}
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for i in range(n):
                    train_step(model, objective, steps_of[i % len(steps_of)], optimizer=optimizer, config=tc, step=i,
                               device=device, **kw)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        for w in caught:
            if "synchroniz" in str(w.message):
                where = f"{Path(w.filename).name}:{w.lineno}"
                sources[where] = sources.get(where, 0) + 1
        syncs.update(steps=n, syncs_per_step=sum(sources.values()) / n,
                     sync_sources=" ".join(f"{k}x{v / n:g}" for k, v in sorted(sources.items())))
    mean_len = statistics.fmean(batch_counts(b)[1] / b["attention_mask"].shape[0] for b in batches)
    return row, syncs, int(round(mean_len))


def bare_full(cfg, n_genes: int, *, device, steps: int, length: int) -> dict:
    """The backbone alone, batch x length random embeddings, nothing padded: forward + backward + AdamW."""
    import torch

    from cellmamba.train import pretrain as P
    from cellmamba.train.precision import autocast, resolve_precision

    torch.manual_seed(0)
    backbone = P.build_pretrain_model(cfg, n_genes=n_genes).backbone.to(device)
    opt = torch.optim.AdamW(backbone.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(cfg.batch_size, length, cfg.d_model, device=device)
    prec = resolve_precision("auto", device)

    def step():
        with autocast(device, prec):
            out = backbone(x)
        out.hidden.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _reset_peak(device)
    for _ in range(3):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return {"arm": "bare_full", "steps": steps, "peak_gib": _peak(device),
            "real_tokens_per_s": round(cfg.batch_size * length * steps / (time.perf_counter() - t0))}


def loop_arm(cfg, corpus: Path, gene_stats: Path, run_dir: Path) -> dict:
    import pandas as pd
    import torch

    from cellmamba.train.pretrain import run_pretraining

    device = torch.device("cuda" if torch.cuda.is_available() and cfg.backend != "torch" else "cpu")
    _reset_peak(device)
    run_pretraining(corpus, run_dir, config=cfg, gene_stats=gene_stats, device=device)
    m = pd.read_csv(run_dir / "metrics.csv")
    steady = m[m["step"] > max(cfg.log_every, cfg.max_steps // 5)]
    steady = steady if len(steady) else m
    return {"arm": "loop", "steps": cfg.max_steps, "peak_gib": _peak(device),
            "real_tokens_per_s": round(float(steady["tokens_per_s"].median()))}


def embed_arm(model_dir: Path, qc: Path, *, device, cells: int, batch: int) -> dict:
    import anndata as ad

    import cellmamba

    adata = ad.read_h5ad(qc)[:cells].copy()
    cellmamba.embed(adata, model_dir, device=device, batch_size=batch, progress=False)  # warm-up (kernels)
    _sync(device)
    t0 = time.perf_counter()
    cellmamba.embed(adata, model_dir, device=device, batch_size=batch, progress=False)
    _sync(device)
    return {"arm": "embed", "steps": 0, "batch": batch, "cells_per_s": round(adata.n_obs / (time.perf_counter() - t0), 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="CSV; rows are appended")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--run", action="append", default=[], help="recipe[:transformer] (repeatable)")
    p.add_argument("--arms", default="loop,in_memory,bare_full,embed")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--workers", type=int, default=8, help="loader worker processes of the loop arm")
    p.add_argument("--embed-cells", type=int, default=4096)
    p.add_argument("--embed-batch", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu for the smoke test; default CUDA")
    p.add_argument("--tag", default="", help="appended to the run directories (an A/B of two checkouts)")
    p.add_argument("--distinct", action="store_true", help="in_memory: a different batch at every step")
    p.add_argument("--no-cudnn-sdp", action="store_true", help="attention without the cuDNN backend")
    p.add_argument("--micro-batch", type=int, default=None, help="cells per pass (batch by accumulation)")
    p.add_argument("--pad-to-multiple", type=int, default=None, help="PretrainConfig.pad_to_multiple (default: the backbone's)")
    p.add_argument("--max-tokens-per-pass", type=int, default=None,
                   help="PretrainConfig.max_tokens_per_pass: a step's cells in passes of this many padded tokens")
    args = p.parse_args(argv)

    import torch

    from cellmamba.runlog import setup_logging
    from cellmamba.train.pretrain import PretrainConfig

    setup_logging(None)
    variant = " ".join(v for v, on in (("distinct", args.distinct), ("no_cudnn_sdp", args.no_cudnn_sdp),
                                       (f"micro_{args.micro_batch}", args.micro_batch),
                                       (f"pad_{args.pad_to_multiple}", args.pad_to_multiple),
                                       (f"budget_{args.max_tokens_per_pass}", args.max_tokens_per_pass)) if on)
    if args.no_cudnn_sdp:
        torch.backends.cuda.enable_cudnn_sdp(False)
    micro = args.micro_batch or args.batch
    if args.batch % micro:
        p.error(f"--micro-batch {micro} must divide --batch {args.batch}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    manifests, gene_stats = build_corpus(args.work, args.cells, args.shards)
    arms = set(args.arms.split(","))
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    code = os.environ.get("CELLMAMBA_CODE", "unknown")
    for spec in args.run or ["scmamba2"]:
        recipe, _, peer = spec.partition(":")
        backbone = "transformer" if peer == "transformer" else "bimamba_mamba2"
        context = CONTEXT[recipe] if device.type == "cuda" else 256
        cfg = PretrainConfig(recipe=recipe, backbone=backbone, d_model=args.d_model, n_layers=args.layers,
                             context_length=context, batch_size=micro, grad_accum=args.batch // micro,
                             max_steps=args.steps, lr=1e-4,
                             warmup_steps=min(20, args.steps), checkpoint_every=args.steps,
                             log_every=max(1, min(10, args.steps // 3)), pathway_weight=0.0,
                             num_workers=args.workers, pad_to_multiple=args.pad_to_multiple,
                             **({"max_tokens_per_pass": args.max_tokens_per_pass} if args.max_tokens_per_pass else {}),
                             backend="cuda" if device.type == "cuda" else "torch")
        common = {"recipe": recipe, "backbone": backbone, "variant": variant, "d_model": args.d_model,
                  "layers": args.layers, "context": context, "batch": args.batch, "grad_accum": args.batch // micro, "code": code, "device": name,
                  "date": dt.date.today().isoformat()}
        corpus = manifests["binned" if recipe == "scmamba2" else "rank"]
        rows, run_dir = [], args.work / f"run_{recipe}_{backbone}{args.tag}"
        if "loop" in arms or "embed" in arms:
            if not (run_dir / "model").exists() or "loop" in arms:
                import shutil

                shutil.rmtree(run_dir, ignore_errors=True)
                row = loop_arm(cfg, corpus, gene_stats, run_dir)
                if "loop" in arms:
                    rows.append(row)
        length = None
        if "in_memory" in arms or "bare_full" in arms:
            mem, syncs, length = in_memory_arms(cfg, corpus, device=device, steps=args.steps, distinct=args.distinct)
            rows += [mem, syncs] if "in_memory" in arms else []
        if "bare_full" in arms:
            rows.append(bare_full(dataclasses.replace(cfg, batch_size=args.batch), 20000, device=device,
                                  steps=args.steps, length=length))
        if "embed" in arms:
            rows.append(embed_arm(run_dir / "model", args.work / "qc_0.h5ad", device=device,
                                  cells=args.embed_cells, batch=args.embed_batch))
        new = not args.out.exists()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS, restval="")
            if new:
                w.writeheader()
            for r in rows:
                w.writerow({**common, **r})
                print(json.dumps({**common, **r}), flush=True)
        torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()

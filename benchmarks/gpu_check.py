"""GPU check of the backbones on mamba_ssm's kernels: throughput and peak memory, and the
largest context that trains. Kernel-vs-reference correctness lives in tests/gpu (run by
benchmarks/gpu_check.sh before this script).

    python benchmarks/gpu_check.py sweep --models bimamba_mamba2 transformer --out results.csv
    python benchmarks/gpu_check.py maxlen --models bimamba_mamba2 --recompute --out maxlen.csv

sweep: training (forward + backward + AdamW step) and forward-only tokens/s of each model at
d_model 512 x 6 layers, bf16 autocast, L in 1k..131k with max(65,536, L) tokens per step (the
Backbone alone, on random embeddings: the embedding and heads are the same for every backbone).
maxlen: the largest L <= 60,530 (the human gene vocabulary) that trains with batch 8 (searched upwards).
Rows: model, mode, L, batch, params, tokens_per_s, peak_gib, device, date (+ status).
A --deadline (seconds) stops cleanly before the device lease's per-command limit.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import time
from pathlib import Path

import torch

from cellmamba.models import Backbone, BackboneConfig, count_parameters, same_size_transformer

FIELDS = ["model", "mode", "L", "batch", "params", "tokens_per_s", "peak_gib", "status", "device", "date"]
T0 = time.perf_counter()


def make_config(model: str, d_model: int, n_layers: int, recompute: bool = False) -> BackboneConfig:
    if model == "transformer":  # same size as the default recipe's backbone (DESIGN.md)
        base = BackboneConfig(arch="bimamba_mamba2", d_model=d_model, n_layers=n_layers)
        return same_size_transformer(base)
    return BackboneConfig(arch=model, d_model=d_model, n_layers=n_layers, backend="cuda",
                          d_state=16 if model.endswith("mamba1") else 128, recompute=recompute)


def measure(config: BackboneConfig, *, L: int, batch: int, mode: str, steps: int) -> tuple[float, float]:
    """Median tokens/s over ``steps`` timed steps (after 2 warm-ups) and peak GiB."""
    torch.manual_seed(0)
    model = Backbone(config).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if mode == "train" else None
    x = torch.randn(batch, L, config.d_model, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if mode == "train":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x).hidden.float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return batch * L / times[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def run_one(model, config, *, L, batch, mode, steps, writer, device):
    row = dict(model=model, mode=mode, L=L, batch=batch, params=count_parameters(Backbone(config)),
               device=device, date=dt.date.today().isoformat(), tokens_per_s="", peak_gib="", status="ok")
    try:
        tok_s, gib = measure(config, L=L, batch=batch, mode=mode, steps=steps)
        row.update(tokens_per_s=round(tok_s), peak_gib=round(gib, 2))
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        # Triton raises a plain RuntimeError ("Triton Error [CUDA]: out of memory") for a launch
        # (an autotuner's benchmark, say) that finds no memory left
        if not isinstance(err, torch.OutOfMemoryError) and "out of memory" not in str(err):
            raise
        row["status"] = "oom"
    finally:
        torch.cuda.empty_cache()
    writer.writerow(row)
    print(f"[{time.perf_counter() - T0:6.0f}s] {model:15s} {mode:7s} L={L:6d} batch={batch:3d} "
          f"{row['tokens_per_s'] or row['status']:>10} tok/s  {row['peak_gib'] or '-':>6} GiB", flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["sweep", "maxlen"])
    p.add_argument("--models", nargs="+", default=["bimamba_mamba2", "transformer", "bimamba_mamba1", "mamba2"])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 131072])
    p.add_argument("--modes", nargs="+", default=["train", "forward"])
    p.add_argument("--tokens", type=int, default=65536, help="tokens per step: max(tokens, L)")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--recompute", action="store_true",
                   help="Mamba2: recompute activations in the backward pass (rows named <model>+recompute)")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds after start to stop starting new runs")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.cuda.get_device_name()
    new = not args.out.exists()
    with args.out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for model in args.models:
            config = make_config(model, args.d_model, args.n_layers, args.recompute)
            if args.recompute and model != "transformer":
                model = f"{model}+recompute"
            if args.part == "sweep":
                for L in args.lengths:
                    for mode in args.modes:
                        if time.perf_counter() - T0 > args.deadline:
                            print(f"deadline: skipped {model} {mode} L={L}")
                            continue
                        run_one(model, config, L=L, batch=max(1, max(args.tokens, L) // L), mode=mode,
                                steps=args.steps, writer=writer, device=device)
                        fh.flush()
            else:  # largest L <= 60,530 that trains with batch 8: upwards, stopping at the first OOM
                # (not downwards from 60,530: after an OOM raised inside a Triton launch, the process
                # did not get its memory back, and 8,192 x 8 then peaked at 76.8 GiB instead of 15.6)
                for L in (8192, 16384, 24576, 32768, 40960, 49152, 60530):
                    if time.perf_counter() - T0 > args.deadline:
                        print(f"deadline: {model} maxlen search stopped before L={L}")
                        break
                    row = run_one(model, config, L=L, batch=8, mode="train", steps=2, writer=writer, device=device)
                    fh.flush()
                    if row["status"] != "ok":
                        break


if __name__ == "__main__":
    main()

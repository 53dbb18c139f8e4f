"""Packed rows against padded batches (issue 23): real tokens per second of a training step
(forward + backward + AdamW) of the backbone, on cells of varying length.

    python benchmarks/bench_packing.py --out results/packing_<device>_<date>.csv            # GPU
    python benchmarks/bench_packing.py --device cpu --d-model 32 --layers 2 --batch 8 --lengths 40 128 --steps 2

Per model (BiMamba2 with the stack merge and with the per-layer merge, and the same-size
Transformer) and per length range, three arms on the same cells:
- ``padded``: the right-padded batch with its attention mask (what runs without packing);
- ``packed``: the same batch through ``Backbone(..., packing=plan_packing(lengths))``, rows as long
  as the longest cell (what ``pretrain.pack`` makes);
- ``packed_x4``: rows of four times that length (Mamba's cost is linear in the row, attention's
  quadratic: fewer, longer rows leave less of each row empty);
- ``full``: the same number of rows at the longest length, nothing padded (the backbone's
  unpadded speed at that shape; its "real tokens" are all its tokens).
Lengths are drawn uniformly in [lo, hi] per cell (seed 0). Rows: model, arm, lo, hi, batch, rows
(packed rows, or the batch), real_tokens_per_step, real_tokens_per_s (median of the timed steps),
peak_gib, fused_seq_idx (packed Mamba2 rows on the fused path: 1, or on mamba_ssm's combined kernel:
0, ``CELLMAMBA_FUSED_SEQ_IDX``), status, device, date. The backbone alone on random embeddings, as gpu_check.py.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from cellmamba.models import Backbone, BackboneConfig, _fused, plan_packing, same_size_transformer

FIELDS = ["model", "arm", "lo", "hi", "batch", "rows", "real_tokens_per_step", "real_tokens_per_s", "peak_gib",
          "fused_seq_idx", "status", "device", "date"]


def configs(d_model: int, n_layers: int, backend: str) -> dict[str, BackboneConfig]:
    stack = BackboneConfig(arch="bimamba_mamba2", d_model=d_model, n_layers=n_layers, merge="gate",
                           merge_every="stack", backend=backend)
    return {"bimamba_mamba2_stack": stack,
            "bimamba_mamba2_layer": dataclasses.replace(stack, merge="sum", merge_every="layer"),
            "transformer": dataclasses.replace(same_size_transformer(stack), backend=backend)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(config, lengths, arm: str, *, device, steps: int, dtype) -> tuple[float, int, float]:
    """(median real tokens/s, rows, peak GiB) of ``steps`` timed training steps after 2 warm-ups."""
    torch.manual_seed(0)
    model = Backbone(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    L = int(max(lengths))
    B = len(lengths)
    x = torch.randn(B, L, config.d_model, device=device)
    mask = packing = None
    if arm == "full":
        real = B * L
    else:
        mask = torch.arange(L, device=device) < torch.as_tensor(lengths, device=device)[:, None]
        real = int(sum(lengths))
        if arm.startswith("packed"):
            packing = plan_packing(lengths, 4 * L if arm == "packed_x4" else L, seq_len=L).to(device)
    rows = packing.n_rows if packing is not None else B
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x, mask, packing=packing)
            loss = out.hidden.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return real / statistics.median(times), rows, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lengths", type=int, nargs=2, action="append", metavar=("LO", "HI"),
                    help="a length range (repeatable); default 1200-2048 (scmamba2's real cells) and 512-2048")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    backend = "cuda" if device.type == "cuda" else "torch"
    dtype = torch.bfloat16 if device.type == "cuda" else None
    ranges = args.lengths or [(1200, 2048), (512, 2048)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    models = configs(args.d_model, args.layers, backend)
    rows = []
    for model, cfg in models.items():
        if args.models and model not in args.models:
            continue
        for lo, hi in ranges:
            lengths = np.random.default_rng(0).integers(lo, hi + 1, size=args.batch).tolist()
            lengths[0] = hi  # the longest cell sets the padded length
            for arm in ("padded", "packed", "packed_x4", "full"):
                row = {"model": model, "arm": arm, "lo": lo, "hi": hi, "batch": args.batch,
                       "fused_seq_idx": int(_fused.FUSED_SEQ_IDX), "device": name, "date": dt.date.today().isoformat()}
                try:
                    tps, n_rows, peak = measure(cfg, lengths, arm, device=device, steps=args.steps, dtype=dtype)
                    row.update(rows=n_rows, real_tokens_per_step=sum(lengths) if arm != "full" else args.batch * hi,
                               real_tokens_per_s=round(tps), peak_gib=round(peak, 2), status="ok")
                except Exception as exc:  # a row per arm, whatever fails
                    row.update(status=f"{type(exc).__name__}: {str(exc)[:200]}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(row, flush=True)
                rows.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()

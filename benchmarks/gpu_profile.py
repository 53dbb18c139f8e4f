"""Where a BiMamba2 training step spends its GPU time: torch.profiler kernel table.

    python benchmarks/gpu_profile.py --arch bimamba_mamba2 --L 4096 --batch 16 --out prof.txt

Writes the CUDA kernels sorted by total time (and their share of the step), so an optimisation
starts from a measurement rather than a guess. ``--host-csv FILE`` also appends how long the host
takes to issue one step against the step's wall time (results/gpu_host_overhead.csv):

    python benchmarks/gpu_profile.py --L 65536 --batch 1 --out prof.txt --host-csv host.csv
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cellmamba.models import Backbone, BackboneConfig


def step(model, opt, x):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).hidden.float().square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def host_overhead(model, opt, x, steps: int = 6) -> tuple[float, float, float]:
    """Seconds per step: the host issuing it (from a synchronised start until step() returns; the
    median), the step with a synchronisation at its end (median), and ``steps`` steps issued back
    to back (mean). When the host takes about as long as the GPU, the GPU waits for it."""
    host, synced = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, opt, x)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append(t1 - t0)
        synced.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x)
    torch.cuda.synchronize()
    back_to_back = (time.perf_counter() - t0) / steps
    return sorted(host)[steps // 2], sorted(synced)[steps // 2], back_to_back


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="bimamba_mamba2")
    p.add_argument("--L", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host-csv", type=Path, help="append host-issue vs wall time per step to this CSV")
    p.add_argument("--label", default="", help="what code ran (the host CSV's code column), e.g. a commit")
    p.add_argument("--trace", type=Path, help="also write a Chrome trace with Python stacks (gzip if the name ends "
                   "in .gz), to attribute each kernel to the code that launched it (benchmarks/trace_kernels.py)")
    args = p.parse_args(argv)
    cfg = BackboneConfig(arch=args.arch, d_model=512, n_layers=6, backend="cuda")
    model = Backbone(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch, args.L, 512, device="cuda")
    for _ in range(3):
        step(model, opt, x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU], with_stack=args.trace is not None) as prof:
        for _ in range(args.steps):
            step(model, opt, x)
        torch.cuda.synchronize()
    # kernels only: CPU-side ops (autograd wrappers, aten calls) report their children's device time too
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    lines = [f"{args.arch} L={args.L} batch={args.batch}: {total / args.steps / 1e3:.2f} ms GPU time per step, "
             f"{args.batch * args.L * args.steps / (total / 1e6) / 1e6:.3f} M tokens/s if kernels ran back to back; "
             f"{len(events)} distinct kernels",
             f"{'kernel':90s} {'calls/step':>10s} {'ms/step':>8s} {'share':>6s}"]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:40]:
        lines.append(f"{e.key[:90]:90s} {e.count / args.steps:10.0f} {e.self_device_time_total / args.steps / 1e3:8.3f} "
                     f"{e.self_device_time_total / total:6.1%}")
    args.out.write_text("\n".join(lines) + "\n")
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
    print("\n".join(lines[:30]))
    if args.host_csv:
        host, synced, back_to_back = host_overhead(model, opt, x)
        new = not args.host_csv.exists()
        with args.host_csv.open("a", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            if new:
                w.writerow(["model", "L", "batch", "gpu_kernel_ms_per_step", "host_enqueue_ms", "step_synchronised_ms",
                            "steps_back_to_back_ms", "code", "device", "date"])
            w.writerow([args.arch, args.L, args.batch, round(total / args.steps / 1e3, 2), round(host * 1e3, 1),
                        round(synced * 1e3, 1), round(back_to_back * 1e3, 1), args.label, torch.cuda.get_device_name(),
                        dt.date.today().isoformat()])
        print(f"host issues a step in {host * 1e3:.1f} ms; step with a sync {synced * 1e3:.1f} ms; "
              f"back to back {back_to_back * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

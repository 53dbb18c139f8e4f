"""Which code launched each GPU kernel, and where the GPU sat idle: read a trace of gpu_profile.py.

    python benchmarks/gpu_profile.py --L 65536 --batch 1 --steps 1 --out prof.txt --trace trace.json.gz
    python benchmarks/trace_kernels.py trace.json.gz            # runs anywhere: no GPU needed

torch.profiler's kernel table (gpu_profile.py's --out) says which kernels take the time, but not
who launched the small ones (a fill, a copy, a reduction) that add up. The Chrome trace links each
kernel to the host call that launched it (the ``correlation`` id) and, with ``with_stack``, to the
Python frames around that call; this script joins them (torch's own tools stop at the aten op).
Prints, per (innermost cellmamba / mamba_ssm / causal_conv1d frame, aten op, kernel): calls and
GPU ms; then the GPU's idle time between kernels, and the largest gaps with the code that launched
the kernel after each. The profiler slows the host (stacks), so gaps are larger than unprofiled.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
from pathlib import Path

OURS = ("cellmamba", "mamba_ssm", "causal_conv1d", "gpu_profile", "gpu_check")


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)["traceEvents"]


class Enclosing:
    """Events of one category per thread; ``at(tid, ts)``: those spanning ts, outermost first."""

    def __init__(self, events: list[dict]):
        self.by_tid = collections.defaultdict(list)
        for e in sorted(events, key=lambda e: e["ts"]):
            self.by_tid[e["tid"]].append(e)
        self.starts = {tid: [e["ts"] for e in evs] for tid, evs in self.by_tid.items()}

    def at(self, tid, ts) -> list[dict]:
        evs = self.by_tid.get(tid, [])
        n = bisect.bisect_right(self.starts.get(tid, []), ts)
        return [e for e in evs[:n] if ts <= e["ts"] + e.get("dur", 0)]


def short(frame: str) -> str:
    for marker in ("site-packages/", "src/", "benchmarks/"):
        if marker in frame:
            return frame.split(marker, 1)[1]
    return frame


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace", type=Path)
    p.add_argument("--top", type=int, default=40, help="rows of the attribution table")
    p.add_argument("--gaps", type=int, default=15, help="largest idle gaps to list")
    args = p.parse_args(argv)
    events = load(args.trace)
    kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")),
                     key=lambda e: e["ts"])
    if not kernels:
        raise SystemExit(f"{args.trace}: no GPU kernels in the trace (was it profiled with CUDA activity?)")
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    frames = Enclosing([e for e in events if e.get("cat") == "python_function"])
    ops = Enclosing([e for e in events if e.get("cat") == "cpu_op"])

    def origin(kernel: dict) -> tuple[str, str]:
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        if launch is None:
            return "?", "?"
        ours = [f["name"] for f in frames.at(launch["tid"], launch["ts"])
                if ".py(" in f["name"] and any(o in f["name"] for o in OURS)]
        op = ops.at(launch["tid"], launch["ts"])
        # the autograd engine's thread has no Python frames of ours: the backward of a PyTorch op
        return (short(ours[-1]) if ours else "(autograd backward)"), (op[-1]["name"] if op else "?")

    table = collections.defaultdict(lambda: [0, 0.0])
    for k in kernels:
        row = table[(*origin(k), k["name"][:48])]
        row[0] += 1
        row[1] += k["dur"]
    busy = sum(k["dur"] for k in kernels)
    span = kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]
    print(f"{len(kernels)} kernels, {busy / 1e3:.2f} ms busy in a {span / 1e3:.2f} ms span "
          f"({(span - busy) / 1e3:.2f} ms idle between them)")
    print(f"{'calls':>5s} {'ms':>7s}  launched from | aten op | kernel")
    for (frame, op, name), (n, dur) in sorted(table.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"{n:5d} {dur / 1e3:7.3f}  {frame} | {op} | {name}")
    gaps = sorted(((b["ts"] - a["ts"] - a["dur"], b) for a, b in zip(kernels, kernels[1:])), key=lambda g: -g[0])
    print("\nlargest idle gaps (before the kernel named):")
    for gap, k in gaps[:args.gaps]:
        frame, op = origin(k)
        print(f"{gap:8.1f} us at {(k['ts'] - kernels[0]['ts']) / 1e3:7.2f} ms  {k['name'][:40]} | {frame} | {op}")


if __name__ == "__main__":
    main()

"""sha256 throughput and the cost of checking token shards at open (issue 19).

Measures, on this machine, one core:

1. ``cellmamba.io.sha256_file`` on a ``--hash-mb`` file of random bytes: from the page cache
   (median of 3) and after ``posix_fadvise(DONTNEED)`` (the pages dropped: a cold read, where
   the kernel honours it);
2. a paper-size token shard (``--shard-mb`` of uint32 tokens, the rank corpus' ~0.19 TB over
   512 shards = ~370 MB each, plus offsets / dataset / measured of 58,600 cells) written by
   :class:`cellmamba.tokenize.ShardWriter`: the time of its digest pass (whole-file sha256 +
   1 MiB block digests, one read), then :func:`cellmamba.tokenize.verify_shard` with
   ``mode="sample"`` (sizes + sampled blocks: what training does at open) and ``mode="full"``
   (every sha256: what it does once per run in the background), warm and cold.

Rows go to ``--out`` (CSV: measurement, seconds, bytes, MB/s, machine, date, the 1-minute load
average when the row was taken: the cores are shared, notes) and the paper-size extrapolation is
printed.

    nice -n 10 .venv/bin/python benchmarks/sha256_throughput.py --out benchmarks/results/sha256_throughput.csv
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellmamba.io import sha256_file  # noqa: E402
from cellmamba.tokenize import ShardWriter, verify_shard  # noqa: E402
from cellmamba.tokenize.shards import SAMPLED_BLOCKS  # noqa: E402

PAPER_BYTES = 0.19e12   # rank corpus (binned: 0.18 TB), README "What the full reproduction costs"
PAPER_SHARDS = 512
PAPER_CELLS = 30e6


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model}, {os.cpu_count()} cores (shared), 1 used"


def drop_cache(path: Path) -> None:
    for f in ([path] if path.is_file() else sorted(path.iterdir())):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, *, reps: int = 1, cold: Path | None = None) -> float:
    """Median seconds of ``reps`` calls; ``cold``: drop that file's (directory's) pages before each."""
    times = []
    for _ in range(reps):
        if cold is not None:
            drop_cache(cold)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hash-mb", type=int, default=1024)
    ap.add_argument("--shard-mb", type=int, default=371)
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", default=None, help="CSV to write")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sha256-bench-", dir=args.work))
    rows = []
    host, date = machine(), datetime.date.today().isoformat()

    def row(measurement, seconds, n_bytes, notes=""):
        rows.append({"measurement": measurement, "seconds": round(seconds, 4), "bytes": n_bytes,
                     "mb_per_s": round(n_bytes / seconds / 1e6, 1) if seconds > 0 else "",
                     "machine": host, "date": date, "load_1min": round(os.getloadavg()[0], 2), "notes": notes})
        print(f"{measurement:<38} {seconds:8.3f} s  {n_bytes / 1e6:9.1f} MB  "
              f"{n_bytes / seconds / 1e6 if seconds > 0 else float('nan'):8.1f} MB/s  {notes}")

    try:
        big = work / "random.bin"
        with open(big, "wb") as fh:
            for _ in range(args.hash_mb):
                fh.write(os.urandom(1 << 20))
        n = big.stat().st_size
        sha256_file(big)  # warm the page cache
        row("sha256_file, page cache", timed(lambda: sha256_file(big), reps=3), n, "median of 3, 4 MiB reads")
        row("sha256_file, cold", timed(lambda: sha256_file(big), reps=3, cold=big), n,
            "median of 3, each after posix_fadvise(DONTNEED)")
        big.unlink()

        rng = np.random.default_rng(0)
        n_cells = int(PAPER_CELLS / PAPER_SHARDS)
        n_tokens = args.shard_mb * (1 << 20) // 4
        lengths = np.full(n_cells, n_tokens // n_cells, dtype=np.int64)
        lengths[: n_tokens - int(lengths.sum())] += 1
        shard = work / "shard"
        writer = ShardWriter(shard)
        for a in range(0, n_cells, 4096):
            part = lengths[a:a + 4096]
            writer.append(part, rng.integers(4, 60_668, int(part.sum()), dtype=np.uint32))
        t0 = time.perf_counter()
        writer.finish(dataset=np.zeros(n_cells, np.int32), measured=np.ones((20, 60_664), bool),
                      manifest={"tokenizer": "rank", "settings": {}, "stats": {}, "vocab_hash": "bench",
                                "n_genes": 60_664, "datasets": [f"d{i}" for i in range(20)], "source": "bench"})
        finish = time.perf_counter() - t0
        shard_bytes = sum(f.stat().st_size for f in shard.iterdir() if f.name != "manifest.json")
        row("ShardWriter.finish (digest pass)", finish, shard_bytes,
            "whole-file sha256 + 1 MiB block digests of every file, one read; incl. np.save of the small arrays")
        verify_shard(shard, mode="full")  # warm
        row("verify_shard full, page cache", timed(lambda: verify_shard(shard, mode="full"), reps=3), shard_bytes,
            "median of 3")
        row("verify_shard sample, page cache", timed(lambda: verify_shard(shard, mode="sample"), reps=3),
            shard_bytes, f"median of 3; first + last + {SAMPLED_BLOCKS} random 1 MiB blocks per file "
            "(MB/s = shard bytes / time)")
        row("verify_shard sample, cold", timed(lambda: verify_shard(shard, mode="sample"), reps=5, cold=shard),
            shard_bytes, "median of 5, each after posix_fadvise(DONTNEED)")
        row("verify_shard full, cold", timed(lambda: verify_shard(shard, mode="full"), reps=3, cold=shard),
            shard_bytes, "median of 3, each after posix_fadvise(DONTNEED)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {r["measurement"]: r for r in rows}
    rate = float(by["sha256_file, page cache"]["mb_per_s"]) * 1e6
    per_shard_sample = float(by["verify_shard sample, cold"]["seconds"])
    print(f"\npaper corpus ({PAPER_BYTES / 1e12:.2f} TB, {PAPER_SHARDS} shards): full sha256 "
          f"{PAPER_BYTES / rate / 60:.1f} core-minutes at {rate / 1e6:.0f} MB/s; sampled check at open "
          f"~{per_shard_sample * PAPER_SHARDS:.0f} s ({per_shard_sample * 1e3:.0f} ms per shard, cold)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plot benchmarks/results/gpu_throughput.csv (tokens/s and peak memory vs context length) with the
workflow's own figure code (cellmamba.plots.throughput): gpu_throughput.png / .pdf beside the CSV.

    python benchmarks/plot_gpu_throughput.py [CSV]
"""
from __future__ import annotations

import sys
from pathlib import Path

from cellmamba.plots import throughput


def main(csv: str = "benchmarks/results/gpu_throughput.csv") -> Path:
    out = Path(csv).with_suffix(".png")
    throughput(csv, out)
    return out


if __name__ == "__main__":
    print(main(*sys.argv[1:]))

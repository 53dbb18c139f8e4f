"""benchmarks/bench_pretrain_e2e.py at tiny sizes on CPU: the corpus is built through the package's
own stages, every arm runs and writes its row, micro-batches accumulate to the batch."""
from __future__ import annotations

import csv
import importlib.util
import sys

import pandas as pd

from conftest import REPO


def test_bench_pretrain_e2e_rows_at_tiny_sizes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_pretrain_e2e", REPO / "benchmarks" / "bench_pretrain_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setitem(sys.modules, "bench_pretrain_e2e", mod)  # its worker processes pickle its functions
    spec.loader.exec_module(mod)
    out, work = tmp_path / "e2e.csv", tmp_path / "work"
    mod.main(["--work", str(work), "--out", str(out), "--device", "cpu", "--cells", "48", "--shards", "2",
              "--d-model", "32", "--layers", "1", "--batch", "4", "--micro-batch", "2", "--steps", "3",
              "--workers", "0", "--embed-cells", "16", "--embed-batch", "8", "--run", "scmamba2"])
    rows = list(csv.DictReader(open(out)))
    assert [r["arm"] for r in rows] == ["loop", "in_memory", "syncs", "bare_full", "embed"]
    assert all(r["variant"] == "micro_2" and r["grad_accum"] == "2" and r["batch"] in ("4", "8") for r in rows)
    assert all(float(r["real_tokens_per_s"]) > 0 for r in rows if r["arm"] in ("loop", "in_memory", "bare_full"))
    assert float(rows[-1]["cells_per_s"]) > 0
    metrics = pd.read_csv(work / "run_scmamba2_bimamba_mamba2" / "metrics.csv")
    assert metrics["step"].max() == 3 and (work / "run_scmamba2_bimamba_mamba2" / "model").is_dir()
    # the binned corpus keeps every expressed gene (max_len 20,000): no cell is cropped at 2,048
    stats = pd.read_csv(work / "gene_stats.tsv", sep="\t")
    assert len(stats) == 20000
    # a token budget: the in-memory arm steps on the budget's passes (lengths here are <= 256)
    mod.main(["--work", str(work), "--out", str(out), "--device", "cpu", "--cells", "48", "--shards", "2",
              "--d-model", "32", "--layers", "1", "--batch", "4", "--max-tokens-per-pass", "512", "--steps", "2",
              "--workers", "0", "--run", "scmamba2", "--arms", "in_memory", "--tag", "_budget"])
    budget = [r for r in csv.DictReader(open(out)) if r["variant"] == "budget_512"]
    assert [r["arm"] for r in budget] == ["in_memory", "syncs"] and float(budget[0]["real_tokens_per_s"]) > 0

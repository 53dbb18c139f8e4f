"""benchmarks/bench_packing.py at tiny sizes on CPU: every arm runs, and the arms count the real
tokens they claim (the packed arm uses fewer rows than the batch)."""
from __future__ import annotations

import csv
import importlib.util

from conftest import REPO


def test_bench_packing_rows_at_tiny_sizes(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_packing", REPO / "benchmarks" / "bench_packing.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "p.csv"
    mod.main(["--device", "cpu", "--d-model", "32", "--layers", "1", "--batch", "6", "--lengths", "3", "20",
              "--steps", "1", "--models", "bimamba_mamba2_stack", "transformer", "--out", str(out)])
    rows = list(csv.DictReader(open(out)))
    assert [(r["model"], r["arm"]) for r in rows] == [(m, a) for m in ("bimamba_mamba2_stack", "transformer")
                                                      for a in ("padded", "packed", "packed_x4", "full")]
    assert all(r["status"] == "ok" and float(r["real_tokens_per_s"]) > 0 for r in rows)
    by = {(r["model"], r["arm"]): r for r in rows}
    padded, packed, x4, full = (by[("transformer", a)] for a in ("padded", "packed", "packed_x4", "full"))
    assert padded["real_tokens_per_step"] == packed["real_tokens_per_step"] == x4["real_tokens_per_step"]
    assert int(full["real_tokens_per_step"]) == 6 * 20
    assert int(x4["rows"]) <= int(packed["rows"]) < int(padded["rows"]) == 6

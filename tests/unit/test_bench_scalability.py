"""benchmarks/bench_scalability.py on CPU at a tiny size: every method's stages are measured in
their own process and appended as rows the scalability figure reads."""
from __future__ import annotations

import importlib.util

import pandas as pd

from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_scalability", REPO / "benchmarks/bench_scalability.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_a_tiny_sweep_writes_one_row_per_stage_with_the_run_identity(tmp_path):
    out = tmp_path / "scal.csv"
    assert bench.main(["--methods", "scmamba_transformer", "pca_cca", "--sizes", "70", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert df[["method", "stage"]].values.tolist() == [["scmamba_transformer", "train+embed"],
                                                        ["scmamba_transformer", "embed"], ["pca_cca", "fit"]]
    assert (df["n_cells"] == 70).all() and (df["wall_s"] > 0).all() and (df["peak_host_gib"] > 0).all()
    # cells/s is n / the unrounded wall time: within what rounding wall_s to 1 ms and cells/s to 0.1 allows
    slack = 70 * 5e-4 / (df["wall_s"] * (df["wall_s"] - 5e-4)) + 0.05
    assert ((df["cells_per_s"] - 70 / df["wall_s"]).abs() <= slack).all(), df[["wall_s", "cells_per_s"]]
    assert df["device"].str.startswith("CPU").all() and df["peak_gpu_gib"].isna().all()
    assert df["config"].eq("config/config.yaml").all() and df["epochs"].eq(1).all()
    # the cells measured are the demo's simulated pairs at that size
    assert bench.dataset(70).n_obs == 70
    # a second sweep appends to the same file under its header
    assert bench.main(["--methods", "pca_cca", "--sizes", "80", "--out", str(out)]) == 0
    assert pd.read_csv(out)["n_cells"].tolist() == [70, 70, 70, 80]

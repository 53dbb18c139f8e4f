"""Two-process gloo DDP under torchrun equals one process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPER = Path(__file__).with_name("_train_toy.py")
# no dropout, no random masking: the two runs must see the same numbers, only split differently
COMMON = ["--steps", "4", "--checkpoint-every", "2", "--grad-accum", "1", "--dropout", "0", "--mask-prob", "0"]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_rank_gloo_ddp_equals_one_process(tmp_path):
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(HELPER), str(tmp_path / "ddp"), "--batch-size", "4", *COMMON],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert "rank 1 of 2, backend gloo" in (tmp_path / "ddp").joinpath(
        next(p.name for p in (tmp_path / "ddp").glob("log-*.txt") if "rank 1" in p.read_text())).read_text()
    single = subprocess.run([sys.executable, str(HELPER), str(tmp_path / "one"), "--batch-size", "8", *COMMON],
                            env=_env(), capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-4000:]

    a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    init = load_file(str(tmp_path / "one" / "checkpoints" / "step_00000002" / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    assert not torch.equal(a["out.weight"], init["out.weight"])  # training moved the weights
    # the logged losses (averaged over ranks) agree with the single process's
    def loss(out):
        return [float(row.split(",")[2]) for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert loss(tmp_path / "ddp") == pytest.approx(loss(tmp_path / "one"), rel=1e-5)
    # the checkpoint holds both ranks' RNG states
    rng = load_file(str(tmp_path / "ddp" / "checkpoints" / "step_00000004" / "rng.safetensors"))
    assert {k.split(".")[0] for k in rng} == {"rank0", "rank1"}

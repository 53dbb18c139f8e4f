"""The launch command workflow_scripts/pretrain.py builds: torchrun for one node with k GPUs, srun +
torchrun (c10d rendezvous on the allocation's first host) for N nodes, with a fake `scontrol` on
PATH and SLURM_* variables of a stand-in allocation; and the errors of a multi-node request that
cannot work. Nothing is launched: subprocess.run is replaced for everything but scontrol."""
from __future__ import annotations

import dataclasses
import json
import os
import runpy
import subprocess
import sys
from types import SimpleNamespace

import pytest

import _pretrain_toy as toy
from conftest import REPO

SCRIPT = REPO / "workflow_scripts" / "pretrain.py"
FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$FAKE_SCONTROL_CALLS"
case "$*" in
  "show hostnames "*) printf '%s\\n' $FAKE_HOSTS ;;
  "-o show job "*) echo "JobId=$3 JobName=x ReqNodeList=(null) NumNodes=$FAKE_NUMNODES NumCPUs=8 \
NodeList=$FAKE_NODELIST BatchHost=cmA" ;;
  *) echo "fake scontrol: unexpected $*" >&2; exit 2 ;;
esac
"""


class _Named(dict):
    __getattr__ = dict.__getitem__


@pytest.fixture
def launch(tmp_path, monkeypatch):
    """Run the rule script with ``resources``; returns (the command it launched, its env, scontrol calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    calls = tmp_path / "scontrol_calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCONTROL_CALLS", str(calls))
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    launched = []
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[0] == "scontrol":
            return real_run(cmd, *args, **kwargs)
        launched.append((cmd, kwargs.get("env")))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)

    def go(**resources):
        smk = SimpleNamespace(
            scriptdir=str(SCRIPT.parent), log=[str(tmp_path / "logs/pretrain/m.log")],
            input=_Named(corpus="corpus/manifest.json", gene_stats="genes.tsv"),
            output=SimpleNamespace(model=str(tmp_path / "results/pretrain/m/model")),
            params=SimpleNamespace(settings=toy.workflow_settings(toy.settings("scmamba2")),
                                   triton_cache=str(tmp_path / ".triton_cache")),
            resources=_Named(resources), threads=1)
        runpy.run_path(str(SCRIPT), init_globals={"snakemake": smk})
        assert len(launched) == 1, launched
        cmd, env = launched.pop()
        return cmd, env, calls.read_text().splitlines() if calls.exists() else []

    go.tmp = tmp_path
    return go


def _split(cmd: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(what comes before torchrun, torchrun's own options, `-m cellmamba pretrain ...`)."""
    t = cmd.index(sys.executable)
    m = cmd.index("-m", t + 3)
    assert cmd[t + 1:t + 3] == ["-m", "torch.distributed.run"], cmd
    return cmd[:t], cmd[t + 3:m], cmd[m:]


def _torchrun_parses(opts: list[str], pretrain: list[str]) -> None:
    """torchrun's own argparse hands the worker exactly ``pretrain`` (no option taken for one of its own)."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args([*opts, *pretrain])
    assert args.module and [args.training_script, *args.training_script_args] == pretrain[1:]


def _expected_pretrain(tmp_path, workers: int) -> list[str]:
    from cellmamba.train.pretrain import PretrainConfig

    config = PretrainConfig.from_workflow(**toy.workflow_settings(toy.settings("scmamba2")))
    return ["-m", "cellmamba", "pretrain", "--corpus", "corpus/manifest.json",
            "--out", str(tmp_path / "results/pretrain/m"),
            "--config", json.dumps(dataclasses.asdict(dataclasses.replace(config, num_workers=workers))),
            "--gene-stats", "genes.tsv"]


def test_one_node_k_gpus_is_standalone_torchrun(launch):
    cmd, env, calls = launch(gpu=4, cpus_per_task=8, mem_mb=1000)
    before, opts, pretrain = _split(cmd)
    assert before == []
    assert opts == ["--nproc_per_node=4", "--standalone"]
    _torchrun_parses(opts, pretrain)
    # 8 cores for 4 processes: 1 loader worker each
    assert pretrain == _expected_pretrain(launch.tmp, 1)  # the ranks' output goes to <log>.ranks
    assert (launch.tmp / "logs/pretrain/m.log.ranks").is_file()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "src")
    assert calls == []


def test_n_nodes_with_gres_gpus_is_srun_torchrun_c10d(launch, monkeypatch):
    # the jobstep executor hands the rule only SLURM_JOB_ID: node count and list come from scontrol
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("FAKE_NUMNODES", "2")
    monkeypatch.setenv("FAKE_NODELIST", "cm[A-B]")
    monkeypatch.setenv("FAKE_HOSTS", "cmA cmB")
    cmd, env, calls = launch(nodes=2, gres="gpu:h100:4", mpi="srun", tasks=2, tasks_per_gpu=0, cpus_per_task=16,
                             mem_mb=1000, gpu=0)
    before, opts, pretrain = _split(cmd)
    log = str(launch.tmp / "logs/pretrain/m.log")
    assert before == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--mem=0",
                      "--kill-on-bad-exit=1", f"--output={log}.node%n"]
    assert opts == ["--nproc_per_node=4", "--nnodes=2", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint=cmA:{29400 + 1234}", "--rdzv_id=1234"]
    _torchrun_parses(opts, pretrain)
    assert pretrain == _expected_pretrain(launch.tmp, 3)  # 16 cores, 4 processes per node
    assert calls == ["-o show job 1234", "show hostnames cm[A-B]"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "src")


def test_n_nodes_on_cpu_one_process_per_node_from_the_allocation_env(launch, monkeypatch):
    for key, value in {"SLURM_JOB_ID": "98765", "SLURM_JOB_NUM_NODES": "3", "SLURM_NNODES": "3",
                       "SLURM_JOB_NODELIST": "n[07-09]", "FAKE_HOSTS": "n07 n08 n09"}.items():
        monkeypatch.setenv(key, value)
    cmd, _, calls = launch(nodes=3, mpi="srun", tasks=3, cpus_per_task=2)
    before, opts, pretrain = _split(cmd)
    assert before[:4] == ["srun", "--nodes=3", "--ntasks-per-node=1", "--cpus-per-task=2"]
    assert opts == ["--nproc_per_node=1", "--nnodes=3", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint=n07:{29400 + 98765 % 20000}", "--rdzv_id=98765"]
    assert pretrain == _expected_pretrain(launch.tmp, 1)
    assert calls == ["show hostnames n[07-09]"]  # the counts came from the environment


@pytest.mark.parametrize("resources, env, message", [
    ({"nodes": 2, "mpi": "srun", "tasks": 2}, {}, "outside a Slurm allocation"),
    ({"nodes": 2, "tasks": 2}, {"SLURM_JOB_ID": "5"}, "nodes=2 needs mpi: srun and tasks: 2"),
    ({"nodes": 2, "mpi": "srun"}, {"SLURM_JOB_ID": "5"}, "nodes=2 needs mpi: srun and tasks: 2"),
    ({"nodes": 2, "mpi": "srun", "tasks": 2, "gpu": 8}, {"SLURM_JOB_ID": "5"}, "gpu=8: `gpu` is a per-job total"),
    ({"nodes": 2, "mpi": "srun", "tasks": 2, "gres": "gpu:4"}, {"SLURM_JOB_ID": "5"}, "needs tasks_per_gpu: 0"),
    # the script inside a one-node step of a two-node job (what the executor does without `mpi`)
    ({"nodes": 2, "mpi": "srun", "tasks": 2}, {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "1",
                                               "SLURM_JOB_NODELIST": "a[1-2]", "FAKE_HOSTS": "a1 a2"},
     "nodes=2 but Slurm job 5 has SLURM_NNODES=1 (a one-node job step)"),
    ({"nodes": 2, "mpi": "srun", "tasks": 2}, {"SLURM_JOB_ID": "5", "FAKE_NUMNODES": "3",
                                               "FAKE_NODELIST": "a[1-3]", "FAKE_HOSTS": "a1 a2 a3"},
     "nodes=2 but Slurm job 5 has NumNodes=3"),
])
def test_multinode_requests_that_cannot_work_fail_naming_the_resource(launch, monkeypatch, resources, env, message):
    from cellmamba.errors import InputError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        launch(**resources)

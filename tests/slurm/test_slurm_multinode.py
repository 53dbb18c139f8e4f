"""Multi-node pretraining (srun + torchrun, c10d rendezvous) through a real two-node Slurm on this machine.

Opt-in like test_slurm.py (CELLMAMBA_TEST_SLURM=1; it installs slurm-wlm/munge if missing and starts
root daemons) and built from its helpers: the same munged + slurmctld set-up and slurm.conf, turned
into two nodes. Each node is a network namespace on a Linux bridge (10.77.0.11 and .12; slurmctld
listens on the bridge's 10.77.0.1) with its own hostname (a UTS namespace) and /etc/hosts (a mount
namespace), where its slurmd runs with `-N <node>` and per-node spool, pid and log files (%n); all
share one munged through its socket path. It runs the pretrain rule's real script
(workflow_scripts/pretrain.py) on a toy corpus through `--executor slurm` with the multi-node
settings that profiles/slurm/config.yaml documents for `pretrain` (read from its comments; one fake
GPU per node instead of four), gloo on CPU, and checks what Slurm ran (one job, NumNodes=2, a step
task on each node), the per-node logs (rank 0 and rank 1 of 2), and that the model equals, bit for
bit, a two-process single-node torchrun run of the same config (the script's `gpu: 2` branch).
Teardown stops the daemons, removes the namespaces and the bridge, and restores /etc/slurm.

Infrastructure that cannot be had skips with the reason; anything wrong once the cluster is up fails.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

if os.environ.get("CELLMAMBA_TEST_SLURM") != "1":
    pytest.skip("real-Slurm test is opt-in: set CELLMAMBA_TEST_SLURM=1 (.ci/run does); it installs "
                "slurm-wlm/munge, starts root daemons and makes network namespaces", allow_module_level=True)

from test_slurm import (GRES_CONF, SLURM_CONF, Cluster, _diagnostics, _ensure_packages, machine_lock,  # noqa: E402
                        _job_env, _run, _tail, _test_profile)

sys.path.insert(0, str(REPO / "tests" / "unit"))
import _pretrain_toy as toy  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

NODES = ("cmnode1", "cmnode2")
NETNS = ("cellmamba-mn1", "cellmamba-mn2")
VETHS = ("cmmnv1", "cmmnv2")  # the bridge's ends; the namespaces hold <name>p
BRIDGE = "cmmnbr0"
SUBNET = "10.77.0"
CTLD_ADDR = f"{SUBNET}.1"
NODE_ADDRS = (f"{SUBNET}.11", f"{SUBNET}.12")
RUN_TIMEOUT_S = 300      # each snakemake call (killed with SIGKILL after this)
MULTINODE_KEYS = ("nodes", "gres", "mpi", "tasks", "tasks_per_gpu")


def _ip(*args, check=True):
    proc = _run(["ip", *args], timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class TwoNodeCluster(Cluster):
    """test_slurm's cluster with two slurmd, each in its own network, UTS and mount namespace."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.ctld_host = self.host          # the machine's name; slurmctld runs outside the namespaces
        self.host = f"{NODES[0][:-1]}[1-2]"  # what test_slurm's start() waits for with sinfo -n
        self.network = False

    # network ----------------------------------------------------------------------------------
    def remove_network(self):
        for ns in NETNS:  # deleting a namespace deletes the veth pair in it
            if ns in _ip("netns", "list", check=False).stdout.split():
                _ip("netns", "delete", ns, check=False)
        for link in (*VETHS, BRIDGE):
            if _ip("link", "show", link, check=False).returncode == 0:
                _ip("link", "delete", link, check=False)

    def make_network(self):
        missing = [b for b in ("ip", "nsenter", "unshare", "mount", "hostname") if not shutil.which(b)]
        if missing:
            pytest.skip(f"the two-node cluster needs {missing} (iproute2 / util-linux)")
        self.remove_network()  # leftovers of an interrupted run (these names are this module's)
        used = [line for line in _ip("-o", "-4", "addr", check=False).stdout.splitlines() if f" {SUBNET}." in line]
        if used:
            pytest.skip(f"{SUBNET}.0/24, the test cluster's subnet, is in use here: {used}")
        self.network = True
        try:
            _ip("link", "add", BRIDGE, "type", "bridge")
            _ip("addr", "add", f"{CTLD_ADDR}/24", "dev", BRIDGE)
            _ip("link", "set", BRIDGE, "up")
            for ns, veth, addr in zip(NETNS, VETHS, NODE_ADDRS):
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
                _ip("link", "set", f"{veth}p", "netns", ns)
                _ip("link", "set", veth, "master", BRIDGE)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", f"{veth}p")
                _ip("-n", ns, "link", "set", f"{veth}p", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except RuntimeError as e:
            pytest.skip(f"could not build the bridge and network namespaces: {e}")
        self.hosts = self.root / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" f"{CTLD_ADDR} {self.ctld_host}\n"
                              + "".join(f"{a} {n}\n" for a, n in zip(NODE_ADDRS, NODES)))

    def in_node(self, i: int, cmd: list[str]) -> list[str]:
        """``cmd`` run as on node ``i``: its network namespace, hostname and /etc/hosts (exec all the way
        down, so the Popen's PID is the command's)."""
        return ["nsenter", f"--net=/run/netns/{NETNS[i]}", "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", f'mount --bind {self.hosts} /etc/hosts && hostname {NODES[i]} && exec "$@"', "sh", *cmd]

    # config: test_slurm's, turned into two nodes ------------------------------------------------
    def write_config(self):
        super().write_config()
        conf = SLURM_CONF.read_text()
        h, r = self.ctld_host, self.root
        nodes = "".join(f"NodeName={n} NodeAddr={a} NodeHostname={n} CPUs={self.cpus} RealMemory={self.real_memory} "
                        "Gres=gpu:1 State=UNKNOWN\n" for n, a in zip(NODES, NODE_ADDRS))
        for pattern, new in ((r"^SlurmctldHost=.*\n", f"SlurmctldHost={h}({CTLD_ADDR})\n"),
                             (r"^SlurmdSpoolDir=.*\n", f"SlurmdSpoolDir={r}/spool/%n\n"),
                             (r"^SlurmdPidFile=.*\n", f"SlurmdPidFile={r}/slurmd.%n.pid\n"),
                             (r"^SlurmdLogFile=.*\n", f"SlurmdLogFile={r}/slurmd.%n.log\n"),
                             (r"^NodeName=.*\n", nodes),
                             (r"^PartitionName=cpu Nodes=\S+", f"PartitionName=cpu Nodes={self.host}"),
                             (r"^PartitionName=gpu Nodes=\S+", f"PartitionName=gpu Nodes={self.host}")):
            conf, n = re.subn(pattern, lambda _, new=new: new, conf, flags=re.M)
            assert n == 1, f"test_slurm's slurm.conf changed: no single line matches {pattern!r}"
        SLURM_CONF.write_text(conf)
        GRES_CONF.write_text(f"AutoDetect=off\nNodeName={self.host} Name=gpu Count=1 File=/dev/null\n")
        for node in NODES:
            (r / "spool" / node).mkdir(mode=0o700, exist_ok=True)

    # daemons ----------------------------------------------------------------------------------
    def _start(self, name, cmd):
        if name != "slurmd":
            return super()._start(name, cmd)
        self.slurmds = [super(TwoNodeCluster, self)._start(f"slurmd-{node}", self.in_node(i, [*cmd, "-N", node]))
                        for i, node in enumerate(NODES)]
        return self.slurmds[0]

    def start(self):
        super().start()  # munged, slurmctld, the two slurmd; returns once sinfo says both nodes are idle
        for node, proc in zip(NODES, self.slurmds):
            self._alive_or_skip(f"slurmd-{node}", proc, self.root / f"slurmd.{node}.log")

    def stop(self):
        try:
            super().stop()
        finally:
            if self.network:
                self.remove_network()


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the two-node Slurm test needs root (packages, daemons, network namespaces)")
    with machine_lock():
        _ensure_packages()
        cluster = TwoNodeCluster(tmp_path_factory.mktemp("slurm_multinode"))
        try:
            cluster.make_network()
            cluster.write_config()
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


# --------------------------------------------------------------------------------------------
# the runs

SNAKEFILE = """\
import json

SETTINGS = json.loads(open("settings.json").read())


rule pretrain:
    input:
        corpus="corpus/manifest.json",
        gene_stats="gene_stats.tsv",
    output:
        model=directory("results/pretrain/{{model}}/model"),
        metrics="results/pretrain/{{model}}/metrics.csv",
    log:
        "logs/pretrain/{{model}}.log",
    resources:
        gpu=0,
        mem_mb=1000,
        runtime=15,
    params:
        settings=SETTINGS,
        triton_cache="results/.triton_cache",
    script:
        "{script}"
"""


def documented_multinode_resources() -> dict:
    """The multi-node lines of the `pretrain:` block of profiles/slurm/config.yaml (commented out there)."""
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    block = re.search(r"^  pretrain:.*\n((?:    .*\n)+)", text, re.M).group(1)
    found = dict(re.findall(rf"^    # ({'|'.join(MULTINODE_KEYS)}): (\S+)", block, re.M))
    assert set(found) == set(MULTINODE_KEYS), f"the profile's pretrain block documents {found}"
    return {k: yaml.safe_load(v) for k, v in found.items()}


def _env() -> dict:
    # one thread per process in both runs (torchrun sets it for its standalone 2-process run only)
    return {**_job_env(), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(two_node_cluster, tmp_path_factory):
    cluster = two_node_cluster
    work = tmp_path_factory.mktemp("slurm_multinode_work")
    (work / "Snakefile").write_text(SNAKEFILE.format(script=REPO / "workflow_scripts" / "pretrain.py"))
    toy.write_corpus(work / "corpus", "binned")
    toy.write_gene_stats(work / "gene_stats.tsv")
    run_settings = toy.settings("scmamba2", max_steps=4)
    (work / "settings.json").write_text(json.dumps(toy.workflow_settings(run_settings)))

    documented = documented_multinode_resources()
    assert documented["nodes"] == 2 and documented["tasks"] == 2, documented
    profile = _test_profile(work, ["pretrain"], cluster)
    cfg = yaml.safe_load((profile / "config.yaml").read_text())
    pretrain = cfg["set-resources"]["pretrain"]
    del pretrain["gpu"]  # the documented change: `gres` per node instead of `gpu`
    pretrain.update(documented, gres=re.sub(r"\d+$", "1", documented["gres"]))  # the test nodes have one GPU each
    pretrain.update(cpus_per_task=1, mem_mb=600)
    (profile / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    t0 = time.monotonic()
    cmd = ["timeout", "-s", "KILL", str(RUN_TIMEOUT_S), sys.executable, "-m", "snakemake"]
    proc = subprocess.run([*cmd, "--executor", "slurm", "--profile", str(profile), "-s", "Snakefile",
                           "results/pretrain/multinode/model"], cwd=work, capture_output=True, text=True,
                          env=_env(), timeout=RUN_TIMEOUT_S + 60)
    slurm_s = time.monotonic() - t0
    if proc.returncode != 0:
        raise AssertionError(f"multi-node pretrain through Slurm failed after {slurm_s:.0f} s:\n"
                             + _diagnostics(work, proc, cluster) + _node_logs(work, cluster))
    jobs = [j for j in cluster.jobs() if os.path.realpath(j.get("WorkDir", "")) == os.path.realpath(work)]
    # the reference: the same rule, one node, two processes (torchrun --standalone), no Slurm
    t0 = time.monotonic()
    ref = subprocess.run([*cmd, "--cores", "2", "-s", "Snakefile", "--set-resources", "pretrain:gpu=2",
                          "pretrain:cpus_per_task=1", "--", "results/pretrain/single/model"],
                         cwd=work, capture_output=True, text=True, env=_env(), timeout=RUN_TIMEOUT_S + 60)
    assert ref.returncode == 0, f"the single-node reference failed:\n{ref.stderr[-6000:]}"
    return {"work": work, "jobs": jobs, "cluster": cluster, "slurm_s": slurm_s, "ref_s": time.monotonic() - t0,
            "steps": run_settings["max_steps"]}


def _node_logs(work: Path, cluster) -> str:
    files = [*sorted((work / "logs/pretrain").glob("multinode.log*")), *(cluster.root / f"slurmd.{n}.log" for n in NODES)]
    return "".join(f"\n--- {p}\n{_tail(p, 2500)}" for p in files)


# --------------------------------------------------------------------------------------------
# the tests

def test_one_slurm_job_on_both_nodes_with_a_task_on_each(runs):
    jobs, cluster = runs["jobs"], runs["cluster"]
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["JobState"] == "COMPLETED", job
    assert job["NumNodes"] == "2" and job["NumTasks"] == "2", job
    assert sorted(_run(["scontrol", "show", "hostnames", job["NodeList"]], check=True).stdout.split()) == list(NODES)
    assert re.search(r"gpu[:=]1\b", job.get("TresPerNode", "") + job.get("Gres", "")), job  # gres per node
    assert job["BatchHost"] == NODES[0], job
    # the script's srun: step 0 of the job, one task launched by each node's slurmd
    for node in NODES:
        log = (cluster.root / f"slurmd.{node}.log").read_text()
        assert re.search(rf"launch task StepId={job['JobId']}\.0 ", log), f"no step task on {node}:\n{log[-2000:]}"


def test_rule_log_names_the_launch_and_each_node_ran_one_rank_of_two(runs):
    work = runs["work"]
    rule_log = (work / "logs/pretrain/multinode.log").read_text()
    assert re.search(rf"pretrain: srun --nodes=2 --ntasks-per-node=1 .*--nproc_per_node=1 --nnodes=2 "
                     rf"--rdzv_backend=c10d --rdzv_endpoint={NODES[0]}:\d+ --rdzv_id={runs['jobs'][0]['JobId']} ",
                     rule_log), rule_log
    for rank in (0, 1):
        log = (work / f"logs/pretrain/multinode.log.node{rank}").read_text()
        assert f"distributed: rank {rank} of 2, backend gloo" in log, log[-3000:]
        assert f"rank {1 - rank} of 2" not in log, log[-3000:]


def test_two_node_model_equals_the_single_node_two_process_run(runs):
    import torch
    from safetensors.torch import load_file

    work = runs["work"]
    single_log = (work / "logs/pretrain/single.log").read_text()
    assert "--nproc_per_node=2 --standalone" in single_log, single_log
    ranks = (work / "logs/pretrain/single.log.ranks").read_text()
    assert "rank 0 of 2, backend gloo" in ranks and "rank 1 of 2, backend gloo" in ranks, ranks[-3000:]
    a = load_file(str(work / "results/pretrain/multinode/model/model.safetensors"))
    b = load_file(str(work / "results/pretrain/single/model/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the same sums of two gradients in the same order: bit for bit
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
    mid = load_file(str(work / "results/pretrain/multinode/checkpoints/step_00000002/model/model.safetensors"))
    assert any(not torch.equal(a[k], mid[k]) for k in a), "steps 3-4 did not change the weights"

    def rows(name):
        return [r.split(",") for r in (work / f"results/pretrain/{name}/metrics.csv").read_text().splitlines()]

    multi, single = rows("multinode"), rows("single")
    assert multi[-1][0] == str(runs["steps"]), multi[-3:]
    loss = [float(r[multi[0].index("loss")]) for r in multi[1:]]
    assert loss and all(math.isfinite(x) for x in loss), loss
    assert [r[:3] for r in multi] == [r[:3] for r in single]
    print(f"two-node Slurm run {runs['slurm_s']:.0f} s, single-node reference {runs['ref_s']:.0f} s")

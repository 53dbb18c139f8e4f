"""The demo workflow through a real single-node Slurm (`--executor slurm`), on this machine.

Opt-in: it installs packages (slurm-wlm, munge) and starts root daemons, so it runs only with
CELLMAMBA_TEST_SLURM=1 (.ci/run sets it) and skips visibly otherwise. It starts its own munged
(own key and socket), slurmctld and slurmd on localhost with /etc/slurm/slurm.conf (the path
Slurm reads by default: inside a job the jobstep plugin drops SLURM_CONF), a `cpu` and a `gpu`
partition and one fake GPU (gres File=/dev/null). It runs the demo DAG on a copy of the
repository with a test profile derived from profiles/slurm (conda off, small resources, the
real profile's GPU request for `pretrain`), then checks every output, what each job asked Slurm
for (`scontrol show job`: MinJobAge keeps finished jobs), and that a failing job is reported.
Teardown stops exactly the processes this module started (and restores /etc/slurm/slurm.conf).

Infrastructure that cannot be had (not root, no apt, the install or a daemon failing to come up)
skips with the reason; anything that goes wrong once the cluster is up fails.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

if os.environ.get("CELLMAMBA_TEST_SLURM") != "1":
    pytest.skip("real-Slurm test is opt-in: set CELLMAMBA_TEST_SLURM=1 (.ci/run does); it installs "
                "slurm-wlm/munge and starts root daemons", allow_module_level=True)

# one cluster at a time: /etc/slurm/slurm.conf is machine-wide (pytest-xdist: --dist loadgroup keeps
# these tests on one worker; a lock file serialises any other concurrent run)
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
LOCK = Path("/tmp/cellmamba-slurm-test.lock")
LOCK_WAIT_S = 900

HERE = Path(__file__).resolve().parent
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
DEMO_TIMEOUT_S = 900      # the whole demo snakemake call (killed with SIGKILL after this)
FAIL_TIMEOUT_S = 120      # the failing one-rule workflow
MAX_STEPS = 4             # pretraining steps of each demo model (the demo config has 20)
GPU_RULES = {"pretrain": 1, "finetune_annotation": 1, "finetune_integration": 1, "finetune_perturbation": 1,
             "train_multiomics": 1, "gene_pair_scores": 1, "rank_reconstruction": 1, "embed_trajectory": 1}
# the evaluation part of the demo, cut to one model, one baseline per task, one variant and no
# scratch controls (the same rules again), so every evaluation rule runs once or twice (the full
# set is the plain demo test's job)
EVAL_OVERRIDES = {"models": ["scmamba2"], "all_genes_variant": False, "scratch_controls": False,
                  "annotation": {"baselines": ["logreg"], "finetune": {"epochs": 1}},
                  "integration": {"baselines": ["pca"], "finetune": {"epochs": 1}},
                  "perturbation": {"baselines": ["additive"], "finetune": {"epochs": 1}},
                  "multiomics": {"methods": ["scmamba"], "baselines": ["pca_cca"], "train": {"epochs": 1}},
                  "trajectory": {"datasets": []}}
# pretraining cut to the one model the evaluation uses: the pretrain rule runs once (the plain demo
# test pretrains all four)
PRETRAIN_OVERRIDES = {"max_steps": MAX_STEPS, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1,
                      "recipes": ["scmamba2"], "transformer_peers": False, "unidirectional_ablations": []}


# --------------------------------------------------------------------------------------------
# helpers

def _run(cmd, timeout=30, check=False, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def _tail(path: Path, n=3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_packages():
    """slurm-wlm and munge from apt when missing; a policy-rc.d keeps postinst from starting daemons."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if not shutil.which("apt-get"):
        pytest.skip(f"Slurm binaries missing ({[b for b in BINARIES if not shutil.which(b)]}) and no apt-get")
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# written by cellmamba tests/slurm: no daemons from package scripts\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        install = ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confdef",
                   "-o", "Dpkg::Options::=--force-confold", "slurm-wlm", "munge"]
        try:
            proc = _run(install, timeout=600, env=env)
            if proc.returncode != 0:  # stale or missing package lists: refresh once and retry
                _run(["apt-get", "update", "-q"], timeout=300, env=env)
                proc = _run(install, timeout=600, env=env)
        except subprocess.TimeoutExpired as e:
            pytest.skip(f"apt-get install slurm-wlm munge timed out: {e}")
        if proc.returncode != 0:
            pytest.skip(f"apt-get install slurm-wlm munge failed ({proc.returncode}): {proc.stderr[-1500:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        pytest.skip(f"after installing slurm-wlm and munge these are still missing: {missing}")


class Cluster:
    """The daemons this module started (Popen objects, foreground mode: their PIDs are ours)."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.saved: dict[Path, bytes | None] = {}
        self.host = socket.gethostname().split(".")[0]

    # config files -------------------------------------------------------------------------
    def _write_system_file(self, path: Path, text: str):
        if path not in self.saved:
            self.saved[path] = path.read_bytes() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def restore_files(self):
        for path, data in self.saved.items():
            try:
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(data)
            except OSError:
                pass

    def write_config(self):
        r = self.root
        for d in ("state", "spool", "munge"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        self.munge_socket = r / "munge" / "munge.socket"
        mem_total_mb = next(int(row.split()[1]) // 1024 for row in Path("/proc/meminfo").read_text().splitlines()
                            if row.startswith("MemTotal:"))
        self.real_memory = max(1200, min(4000, int(mem_total_mb * 0.6)))
        cpus = max(1, min(2, os.cpu_count() or 1))
        self.cpus = cpus
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        h = self.host
        conf = f"""\
# written by cellmamba tests/slurm/test_slurm.py (a throw-away single-node test cluster)
ClusterName=cellmambatest
SlurmctldHost={h}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
MaxJobCount=10000
InactiveLimit=0
KillWait=5
SlurmctldTimeout=60
SlurmdTimeout=60
MessageTimeout=20
GresTypes=gpu
NodeName={h} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={self.real_memory} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={h} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={h} Default=NO MaxTime=INFINITE State=UP
"""
        self._write_system_file(SLURM_CONF, conf)
        self._write_system_file(GRES_CONF, f"AutoDetect=off\nNodeName={h} Name=gpu Count=1 File=/dev/null\n")

    # daemons --------------------------------------------------------------------------------
    def _start(self, name, cmd):
        log = open(self.root / f"{name}.out", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def _alive_or_skip(self, name, proc, logfile):
        if proc.poll() is not None:
            pytest.skip(f"{name} exited ({proc.returncode}) while starting:\n"
                        f"{_tail(self.root / f'{name}.out', 1500)}\n{_tail(logfile, 1500)}")

    def start(self):
        r = self.root
        key = r / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        munged = self._start("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                                        f"--socket={self.munge_socket}", f"--pid-file={r}/munge/munged.pid",
                                        f"--log-file={r}/munge/munged.log", f"--seed-file={r}/munge/munged.seed"])
        deadline = time.monotonic() + 30
        while True:
            self._alive_or_skip("munged", munged, r / "munge/munged.log")
            if self.munge_socket.exists() and shutil.which("munge"):
                p = subprocess.run(f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
                                   shell=True, capture_output=True, timeout=10)
                if p.returncode == 0:
                    break
            if time.monotonic() > deadline:
                pytest.skip(f"munged did not answer within 30 s: {_tail(r / 'munge/munged.log', 1500)}")
            time.sleep(0.3)

        ctld = self._start("slurmctld", ["slurmctld", "-D", "-i"])
        slurmd = self._start("slurmd", ["slurmd", "-D"])
        deadline = time.monotonic() + 120
        state = ""
        while True:
            self._alive_or_skip("slurmctld", ctld, r / "slurmctld.log")
            self._alive_or_skip("slurmd", slurmd, r / "slurmd.log")
            try:
                p = _run(["sinfo", "-h", "-N", "-n", self.host, "-o", "%T"], timeout=20)
                state = " ".join(sorted(set(p.stdout.lower().split())))  # one line per partition
            except subprocess.TimeoutExpired:
                state = "(sinfo timed out)"
            if state in ("idle", "mixed", "allocated"):
                break
            if any(s in state for s in ("drain", "down", "fail")):
                _run(["scontrol", "update", f"nodename={self.host}", "state=resume"], timeout=20)
            if time.monotonic() > deadline:
                pytest.skip(f"Slurm node not idle within 120 s (state {state!r}):\n"
                            f"{_tail(r / 'slurmctld.log', 1500)}\n{_tail(r / 'slurmd.log', 1500)}")
            time.sleep(1)

    def stop(self):
        # our cluster's jobs first (every job of this cluster was submitted by this module)
        try:
            if any(n == "slurmctld" and p.poll() is None for n, p in self.procs):
                active = _run(["squeue", "-h", "-o", "%i"], timeout=20).stdout.split()
                if active:
                    _run(["scancel", *active], timeout=20)
                    deadline = time.monotonic() + 20
                    while _run(["squeue", "-h", "-o", "%i"], timeout=20).stdout.split() and time.monotonic() < deadline:
                        time.sleep(1)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for name, proc in reversed(self.procs):  # slurmd, slurmctld, munged
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self.restore_files()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (MinJobAge=3600 keeps finished ones), as key=value dicts."""
        out = _run(["scontrol", "-o", "show", "job"], timeout=30, check=True).stdout
        records = []
        for line in out.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            rec = {}
            for m in re.finditer(r"(\w[\w:/]*)=(.*?)(?= \w[\w:/]*=|$)", line):
                rec[m.group(1)] = m.group(2).strip()
            records.append(rec)
        return records


@contextlib.contextmanager
def machine_lock():
    """Hold LOCK (one real-Slurm cluster on this machine at a time: /etc/slurm is machine-wide);
    skips when another run holds it for LOCK_WAIT_S."""
    lock = open(LOCK, "w")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.skip(f"another real-Slurm test run held {LOCK} for {LOCK_WAIT_S} s")
            time.sleep(2)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the real-Slurm test needs root (it installs packages and starts munged/slurmctld/slurmd)")
    with machine_lock():
        _ensure_packages()
        cluster = Cluster(tmp_path_factory.mktemp("slurm"))
        try:
            cluster.write_config()
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


# --------------------------------------------------------------------------------------------
# the workflow runs

def _copy_repo(dst: Path):
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if (src.is_file() or src.is_symlink()) and not rel.startswith(("tests/", "benchmarks/")):
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out, follow_symlinks=False)


def _job_env() -> dict[str, str]:
    """The submitter's environment (sbatch --export=ALL hands it to the jobs) with the venv first."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1", VIRTUAL_ENV=sys.prefix,
               PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "/usr/bin:/bin")]))
    env.pop("SLURM_CONF", None)
    return env


def _test_profile(work: Path, rules: list[str], cluster: Cluster) -> Path:
    """profiles/slurm with conda off, statuses through squeue, and resources that fit the test node
    (its job groups kept: a group job is as wide as the node's cores and memory)."""
    real = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert real["executor"] == "slurm"
    gpu_rules = {r: v["gpu"] for r, v in real.get("set-resources", {}).items() if v.get("gpu")}
    assert gpu_rules == GPU_RULES, f"the slurm profile's GPU rules changed: {gpu_rules}"
    profile = {k: v for k, v in real.items()
               if k not in ("software-deployment-method", "conda-frontend", "configfile", "set-resources",
                            "default-resources", "slurm-init-seconds-before-status-checks", "retries")}
    profile.update({
        "jobs": 4,
        "retries": 0,
        "latency-wait": 15,
        "keep-going": False,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 5,
        "slurm-no-account": True,
        "cores": cluster.cpus,
        "resources": [f"mem_mb={cluster.real_memory}"],
        "default-resources": {"runtime": 15, "mem_mb": 600, "cpus_per_task": 1, "slurm_partition": "cpu"},
        "set-resources": {r: {"mem_mb": 600, "runtime": 15, "cpus_per_task": 1, "slurm_partition": "cpu"}
                          for r in rules},
    })
    for rule, n in gpu_rules.items():
        profile["set-resources"].setdefault(rule, {"runtime": 15, "cpus_per_task": 1}).update(
            gpu=n, mem_mb=1000, slurm_partition="gpu")
    groups = dict(g.split("=", 1) for g in real.get("groups", []))
    profile["groups"] = [f"{r}={g}" for r, g in groups.items() if r in rules]  # of this workflow's rules
    used = {g for r, g in groups.items() if r in rules}
    profile["group-components"] = [c for c in real.get("group-components", []) if c.split("=", 1)[0] in used]
    for key in ("groups", "group-components"):
        if not profile[key]:
            del profile[key]
    path = work / "profiles/slurm_test/config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path.parent


def _snakemake(args, cwd: Path, timeout: int):
    cmd = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "snakemake", *args]
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_job_env(), timeout=timeout + 60)
    except subprocess.TimeoutExpired as e:  # pragma: no cover - timeout(1) kills first
        raise AssertionError(f"snakemake hung past {timeout + 60} s: {e}")


def _diagnostics(work: Path, proc, cluster: Cluster) -> str:
    logs = "\n".join(f"--- {p.relative_to(work)}\n{_tail(p, 1500)}"
                     for p in sorted((work / ".snakemake/slurm_logs").rglob("*.log"))[-6:])
    return (f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}\n{logs}\n"
            f"--- slurmctld.log\n{_tail(cluster.root / 'slurmctld.log', 1500)}")


@pytest.fixture(scope="module")
def demo_run(slurm_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_demo") / "cellmamba"
    _copy_repo(work)
    rules = _run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=work, timeout=120, check=True,
                 env=_job_env()).stdout
    rules = [line.split()[0] for line in rules.splitlines() if re.match(r"^[A-Za-z_]\w*( |$)", line)]
    profile = _test_profile(work, rules, slurm_cluster)
    cfg = yaml.safe_load((work / "config/config.yaml").read_text())
    # a second config file is deep-merged over the first (--config KEY={...} would give strings)
    overrides = work / "slurm_test_overrides.yaml"
    # the gene analyses are off here (their rules are local-run in the plain demo test)
    overrides.write_text(yaml.safe_dump({"pretrain": PRETRAIN_OVERRIDES, "evaluation": EVAL_OVERRIDES,
                                         "genes": {"models": []}}))
    cfg["pretrain"].update(PRETRAIN_OVERRIDES)
    t0 = time.monotonic()
    proc = _snakemake(["--executor", "slurm", "--profile", str(profile),
                       "--configfile", "config/config.yaml", overrides.name], cwd=work, timeout=DEMO_TIMEOUT_S)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise AssertionError(f"demo through Slurm failed after {elapsed:.0f} s:\n"
                             + _diagnostics(work, proc, slurm_cluster))
    jobs = [j for j in slurm_cluster.jobs() if os.path.realpath(j.get("WorkDir", "")) == os.path.realpath(work)]
    return {"work": work, "proc": proc, "config": cfg, "jobs": jobs, "elapsed": elapsed, "cpus": slurm_cluster.cpus}


def _rule(job: dict[str, str]) -> str:
    m = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", job.get("Comment", ""))
    assert m, f"job {job.get('JobId')} has no snakemake rule comment: {job.get('Comment')!r}"
    return m.group(1)


def _gpu_request(job: dict[str, str]) -> str:
    """What the job asked for in GPUs, from the scontrol fields that carry --gpus / --gres."""
    return " ".join(f"{k}={job[k]}" for k in ("TresPerJob", "TresPerNode", "TresPerSocket", "TresPerTask",
                                              "Gres", "TresBind") if "gpu" in job.get(k, ""))


# --------------------------------------------------------------------------------------------
# the tests

def test_demo_dag_outputs_through_slurm(demo_run):
    work, cfg = demo_run["work"], demo_run["config"]
    for tok in cfg["tokenize"]["tokenizers"]:
        assert (work / f"results/tokens/{tok}/manifest.json").is_file(), tok
    models = list(cfg["pretrain"]["recipes"])
    if cfg["pretrain"]["transformer_peers"]:
        models += [f"{r}_transformer" for r in models]
    for model in models:
        model_dir = work / f"results/pretrain/{model}/model"
        assert model_dir.is_dir() and any(model_dir.iterdir()), model
        steps = [row.split(",")[0] for row in (work / f"results/pretrain/{model}/metrics.csv").read_text().splitlines()]
        assert steps[-1] == str(MAX_STEPS), f"{model}: the --config override did not reach the job ({steps[-3:]})"
    for table, model, baseline in (("annotation", "scmamba2", "logreg"), ("integration", "scmamba2", "pca"),
                                   ("perturbation", "scmamba2", "additive"), ("multiomics", "scmamba", "pca_cca")):
        text = (work / f"results/tables/{table}.md").read_text()
        assert f"| {model} " in text and f"| {baseline} " in text, text


def test_every_demo_job_ran_in_slurm_and_only_gpu_rules_asked_for_a_gpu(demo_run):
    jobs, cfg = demo_run["jobs"], demo_run["config"]
    assert jobs, "slurmctld knows no job of the demo run (MinJobAge should keep them)"
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(_rule(job), []).append(job)
        assert job.get("JobState") == "COMPLETED", (job.get("JobId"), job.get("JobState"), job.get("Reason"))
    n_models = len(cfg["pretrain"]["recipes"]) * (2 if cfg["pretrain"]["transformer_peers"] else 1)
    n_shards = cfg["census"]["n_shards"]
    n_tokenize = n_shards * len(cfg["tokenize"]["tokenizers"])
    # the per-shard chain runs as the profile's group jobs ("rule_<group>_<its rules>" in Slurm's
    # comment): ceil(components / group-components) jobs of each group
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    groups = dict(g.split("=", 1) for g in profile["groups"])
    size = {g: int(n) for g, n in (c.split("=", 1) for c in profile["group-components"])}
    assert groups == {"census_download": "shard", "qc": "shard", "tokenize": "tokens"}, groups
    expected = {"build_demo_census": 1, "census_plan": 1, "shard_census_download_qc": -(-n_shards // size["shard"]),
                "gene_stats": 1, "gene_positions": 1, "tokens_tokenize": -(-n_tokenize // size["tokens"]),
                "token_manifest": len(cfg["tokenize"]["tokenizers"]), "pretrain": n_models,
                # evaluation (tables are local rules): one dataset per task, one model, one baseline
                "prepare_dataset": 4, "finetune_annotation": 1, "baseline_annotation": 1, "score_annotation": 2,
                "finetune_integration": 1, "baseline_integration": 1, "score_integration": 2,
                "perturbation_split": 1, "finetune_perturbation": 1, "baseline_perturbation": 1,
                "score_perturbation": 2, "train_multiomics": 1, "baseline_multiomics": 1, "score_multiomics": 2}
    assert {r: len(v) for r, v in by_rule.items()} == expected
    # a group job runs its jobs side by side: as many cores as the node has (the test profile's
    # `cores`), and every job of it left its own log and benchmark
    for group, width in (("shard_census_download_qc", n_shards), ("tokens_tokenize", n_tokenize)):
        for job in by_rule[group]:
            assert int(job["NumCPUs"]) == min(demo_run["cpus"], width), (group, job)
    work = demo_run["work"]
    for rule, n in (("census_download", n_shards), ("qc", n_shards), ("tokenize", n_tokenize)):
        assert len(list((work / "logs" / rule).glob("*.benchmark.tsv"))) == n, rule
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            gpus = _gpu_request(job)
            if rule in GPU_RULES:
                assert re.search(r"gpu[:=]1\b", gpus), f"{rule} job {job['JobId']} asked for no GPU: {job}"
                assert job.get("Partition") == "gpu", job.get("Partition")
            else:
                assert not gpus, f"CPU rule {rule} (job {job['JobId']}) asked for a GPU: {gpus}"
                assert job.get("Partition") == "cpu", job.get("Partition")


def test_failing_job_is_reported_failed(slurm_cluster, tmp_path):
    work = tmp_path / "fail"
    work.mkdir()
    shutil.copy(HERE / "fail" / "Snakefile", work / "Snakefile")
    profile = _test_profile(work, ["all", "fail"], slurm_cluster)
    proc = _snakemake(["--executor", "slurm", "--profile", str(profile), "-s", "Snakefile"],
                      cwd=work, timeout=FAIL_TIMEOUT_S)
    assert proc.returncode not in (0, -9, 137), _diagnostics(work, proc, slurm_cluster)
    assert "Error in rule fail" in proc.stdout + proc.stderr, _diagnostics(work, proc, slurm_cluster)
    jobs = [j for j in slurm_cluster.jobs() if os.path.realpath(j.get("WorkDir", "")) == os.path.realpath(work)]
    assert [_rule(j) for j in jobs] == ["fail"], jobs
    assert jobs[0]["JobState"] == "FAILED", jobs[0]
    assert not (work / "never.txt").exists()

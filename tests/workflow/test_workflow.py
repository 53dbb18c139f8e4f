"""The workflow: lint, dry-runs of both configs (the paper one through the slurm profile),
the profile's resource entries, conda env files, and the demo data path end to end."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args, cwd=REPO, timeout=600, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_lint_is_clean():
    proc = _snakemake("--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations" in out, out[-4000:]


def test_dry_run_demo():
    out = _snakemake("-n", "--cores", "2").stdout
    for rule in ("build_demo_census", "census_plan", "census_download", "qc", "gene_stats", "tokenize", "token_manifest"):
        assert rule in out, f"demo DAG lacks rule {rule}"


def test_dry_run_paper_through_slurm_profile():
    """`snakemake -n --profile slurm all` as users type it; conda replaced (no conda on CI machines)."""
    proc = _snakemake("-n", "--profile", "slurm", "all", "--sdm", "env-modules", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert "census_download" in out and "tokenize" in out, out[-3000:]
    assert "build_demo_census" not in out, "the paper config must not build the demo store"
    n_shards = yaml.safe_load((REPO / "config/paper.yaml").read_text())["census"]["n_shards"]
    # each shard is a job: the rule table lists census_download with n_shards jobs
    line = next(l for l in out.splitlines() if l.split() and l.split()[0] == "census_download")
    assert int(line.split()[1]) == n_shards


def test_unknown_config_key_is_refused():
    proc = _snakemake("-n", "--cores", "1", "--config", "bogus_key=1", check=False)
    assert proc.returncode != 0
    assert "bogus_key" in proc.stdout + proc.stderr


def test_slurm_profile_names_only_existing_rules():
    """Snakemake ignores set-resources entries for rules that do not exist: catch typos here."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert (REPO / "slurm").resolve() == (REPO / "profiles/slurm").resolve()
    assert profile["configfile"] == "config/paper.yaml"
    assert profile["executor"] == "slurm"
    proc = _snakemake("--list-rules", "--profile", "slurm", "--sdm", "env-modules")
    rules = set(proc.stdout.split())
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    unknown = named - rules
    assert not unknown, f"profiles/slurm/config.yaml names rules that do not exist: {sorted(unknown)}"


def test_every_rule_has_a_parsing_conda_env():
    """Every rule (except named targets) names a conda env file that exists, parses and is pinned."""
    from rattler import MatchSpec
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, ResourceSettings

    with SnakemakeApi() as api:
        wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                          snakefile=REPO / "Snakefile", workdir=REPO)
        rules = wf._workflow.rules
        checked = 0
        for rule in rules:
            if not rule.output:  # named targets (all, corpus, pretrained) run nothing
                continue
            assert rule.conda_env, f"rule {rule.name} names no conda env"
            path = (Path(str(rule.basedir)) / str(rule.conda_env)).resolve()
            assert path.is_file(), f"rule {rule.name}: conda env {path} does not exist"
            env = yaml.safe_load(path.read_text())
            assert env.get("channels") and "nodefaults" in env["channels"], f"{path}: needs channels incl. nodefaults"
            for dep in env["dependencies"]:
                if isinstance(dep, str):
                    MatchSpec(dep)  # raises on a malformed spec
                    assert "=" in dep or dep in {"cpuonly", "pip"}, f"{path}: {dep!r} is not pinned"
                else:  # the pip section: exact pins
                    for req in dep["pip"]:
                        assert "==" in req, f"{path}: pip requirement {req!r} is not pinned"
            checked += 1
        assert checked >= 5


def test_slurm_profile_gives_gpu_rules_gpus_and_cpu_rules_none():
    """Paper dry-run through the profile: pretrain jobs ask for a GPU, the data path's jobs do not."""
    out = _snakemake("-n", "--profile", "slurm", "results/pretrain/scmamba2/model", "results/qc/gene_stats.tsv",
                     "--sdm", "env-modules").stdout
    jobs = out.split("\nrule ")[1:]
    assert jobs, out[-2000:]
    seen = set()
    for job in jobs:
        name = job.split(":", 1)[0].strip()
        resources = next((l for l in job.splitlines() if l.strip().startswith("resources:")), "")
        gpus = [int(t.split("=")[1]) for t in resources.replace(",", " ").split() if t.startswith("gpu=")]
        if name == "pretrain":
            assert gpus == [1], resources
        else:
            assert not gpus or gpus == [0], f"{name} asks for a GPU: {resources}"
        seen.add(name)
    assert {"pretrain", "census_download", "qc", "gene_stats"} <= seen

"""The pretrain rule's reruns through Snakemake itself: a rerun after an interrupted run continues
its training curve, and a rerun that fails (a changed config: an unavailable backend, a max_steps
below the checkpoints) leaves the previous model and curve as they were. Snakemake deletes a job's
outputs before running it unless they are update(); this runs the repository's rules/pretrain.smk
(included by a small Snakefile that supplies its input and settings helpers) on a tiny corpus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
import _pretrain_toy as toy  # noqa: E402

RUN = "results/pretrain/genemamba"
SNAKEFILE = f'''\
def pretrain_inputs(wildcards):
    return {{"corpus": config["corpus"], "gene_stats": config["gene_stats"]}}


def pretrain_settings(wildcards):
    return config["settings"]


def pretrained_models():
    return []


include: "{REPO / 'rules' / 'pretrain.smk'}"
'''


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _snakemake(work: Path, **changes) -> subprocess.CompletedProcess:
    """`snakemake results/pretrain/genemamba/model` with the tiny run's settings (+ changes)."""
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({"corpus": str(work / "rank" / "manifest.json"),
                                      "gene_stats": str(work / "gene_stats.tsv"),
                                      "settings": toy.workflow_settings(toy.settings("genemamba", **changes))}))
    return subprocess.run([sys.executable, "-m", "snakemake", f"{RUN}/model", "--cores", "1", "--configfile",
                           str(config)], cwd=work, env=_env(), capture_output=True, text=True, timeout=600)


def _files(work: Path) -> dict[str, bytes]:
    run = work / RUN
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted((run / "model").iterdir())
            if not p.name.startswith(".")} | {"metrics.csv": (run / "metrics.csv").read_bytes()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A run SIGKILLed before its step 6 (checkpoint at step 4; rows of steps 1-5 written), then
    completed by Snakemake. Returns the working directory; ``killed_rows`` holds the killed run's
    metrics lines."""
    work = tmp_path_factory.mktemp("pretrain_rule")
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "rank").mkdir()
    toy.write_corpus(work / "rank", "rank")
    toy.write_gene_stats(work / "gene_stats.tsv")
    killed = subprocess.run([sys.executable, toy.__file__, str(work / RUN), str(work / "rank" / "manifest.json"),
                             str(work / "gene_stats.tsv"), json.dumps(toy.settings("genemamba")), "--kill-at", "5"], env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    (work / "killed_rows").write_text((work / RUN / "metrics.csv").read_text())
    proc = _snakemake(work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


def test_a_rerun_after_an_interrupted_run_continues_its_training_curve(work):
    killed = (work / "killed_rows").read_text().splitlines()
    assert [line.split(",")[0] for line in killed[1:]] == ["1", "2", "3", "4", "5"]
    curve = (work / RUN / "metrics.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in curve[1:]] == [1, 2, 3, 4, 5, 6]  # each step once
    assert curve[:5] == killed[:5]  # header and steps 1-4 (up to the checkpoint) as the killed run wrote them
    assert "resumed from" in (work / "logs" / "pretrain" / "genemamba.log").read_text()


@pytest.mark.parametrize("changes, message", [
    ({"backend": "cuda"}, "backend='cuda' was requested"),
    ({"max_steps": 3}, "max_steps is 3, but the newest checkpoint is at step 6"),
], ids=["cuda_on_cpu", "max_steps_below_checkpoint"])
def test_a_failed_rerun_keeps_the_previous_model_and_curve(work, changes, message):
    before = _files(work)
    assert "model/model.safetensors" in before
    proc = _snakemake(work, **changes)
    assert proc.returncode != 0
    assert message in (work / "logs" / "pretrain" / "genemamba.log").read_text() + proc.stderr
    assert (work / RUN / "model").is_dir(), "the previous model was deleted"
    assert _files(work) == before

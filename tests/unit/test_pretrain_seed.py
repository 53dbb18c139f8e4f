"""Same config and seed, same model: pretraining through the package entry point (both recipes),
through the pretrain rule's script in separate processes and killed mid-way then rerun (genemamba:
a subprocess costs seconds), and fine-tuning. Each run first draws a different amount of
randomness from the global generators (as other work in a process would), so that only seeding at
the entry point makes the weights equal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import _pretrain_toy as toy
from cellmamba.errors import InputError
from cellmamba.train.checkpoint import list_checkpoints
from cellmamba.train.pretrain import PretrainConfig, run_pretraining

RECIPES = {"genemamba": "rank", "scmamba2": "binned"}
HELPER = Path(toy.__file__)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """recipe -> corpus manifest, plus "gene_stats"."""
    root = tmp_path_factory.mktemp("pretrain_inputs")
    out = {"gene_stats": toy.write_gene_stats(root / "gene_stats.tsv")}
    for recipe, tokenizer in RECIPES.items():
        (root / tokenizer).mkdir()
        out[recipe] = toy.write_corpus(root / tokenizer, tokenizer)
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    differ = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"tensors differ (max abs difference): {differ}"


def run_rule_script(out_dir: Path, inputs: dict, settings: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    recipe = settings["recipe"]
    return subprocess.run([sys.executable, str(HELPER), str(out_dir), str(inputs[recipe]), str(inputs["gene_stats"]),
                           json.dumps(settings), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_run_pretraining_with_the_same_seed_gives_the_same_weights(tmp_path, inputs, recipe):
    config = PretrainConfig(**toy.settings(recipe))
    runs = []
    for i, (draws, seed) in enumerate([(1, 0), (7, 0), (1, 1)]):
        toy.disturb_rng(draws)
        run_pretraining(inputs[recipe], tmp_path / f"run{i}", config=PretrainConfig(**{**toy.settings(recipe),
                                                                                      "seed": seed}),
                        gene_stats=inputs["gene_stats"], device="cpu")
        runs.append(weights(tmp_path / f"run{i}"))
    assert config.seed == 0
    assert_bitwise_equal(runs[0], runs[1])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # another seed, another model


@pytest.fixture(scope="module")
def rule_run(tmp_path_factory, inputs) -> Path:
    """The run directory of one uninterrupted genemamba run of the rule's script (its own process)."""
    run = tmp_path_factory.mktemp("rule_run") / "genemamba"
    proc = run_rule_script(run, inputs, toy.settings("genemamba"), "--disturb", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_the_rule_script_gives_the_same_weights_in_another_process(tmp_path, inputs, rule_run):
    proc = run_rule_script(tmp_path / "again", inputs, toy.settings("genemamba"), "--disturb", "11")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_bitwise_equal(weights(tmp_path / "again"), weights(rule_run))


def test_a_killed_rule_run_rerun_to_the_end_equals_the_uninterrupted_run(tmp_path, inputs, rule_run):
    # 6 steps, checkpoints at 2 and 4, one metrics row per step; SIGKILL before step 6 (0-based 5):
    # step 5 is lost with the process and repeated by the rerun, which resumes from step 4
    settings, run = toy.settings("genemamba"), tmp_path / "cut"
    killed = run_rule_script(run, inputs, settings, "--kill-at", "5", "--disturb", "5")
    assert killed.returncode == -9, killed.stderr[-3000:]  # a real SIGKILL, not a clean exit
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]
    assert not (run / "model").exists()
    assert list(pd.read_csv(run / "metrics.csv").step) == [1, 2, 3, 4, 5]

    rerun = run_rule_script(run, inputs, settings, "--disturb", "9")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in (tmp_path / "cut.log").read_text()
    assert_bitwise_equal(weights(run), weights(rule_run))
    # the training curve: each step once, and the same losses as the uninterrupted run's
    got, ref = pd.read_csv(run / "metrics.csv"), pd.read_csv(rule_run / "metrics.csv")
    assert list(got.step) == list(ref.step) == [1, 2, 3, 4, 5, 6]
    assert got.loss.tolist() == ref.loss.tolist()


def test_annotation_fine_tuning_with_the_same_seed_gives_the_same_weights(tmp_path):
    from test_tasks import VOCAB, _typed_cells

    from cellmamba.tasks import FinetuneConfig, run_annotation
    from cellmamba.train.pretrain import build_pretrain_model

    pretrained = build_pretrain_model(PretrainConfig(**toy.settings("scmamba2")), n_genes=len(VOCAB))
    path = pretrained.save_pretrained(tmp_path / "pretrained")
    adata = _typed_cells(n=40)
    runs = []
    for i, (draws, seed) in enumerate([(1, 0), (7, 0), (1, 1)]):
        toy.disturb_rng(draws)
        cfg = FinetuneConfig(epochs=1, lr=3e-3, batch_size=8, max_len=8, backend="torch", seed=seed)
        run_annotation(adata, path, VOCAB, config=cfg, out_dir=tmp_path / f"run{i}")
        runs.append(weights(tmp_path / f"run{i}"))
    assert_bitwise_equal(runs[0], runs[1])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_packed_pretraining_follows_the_padded_run(tmp_path, inputs):
    """pretrain.pack through run_pretraining, with a loader worker (the plan is made in the worker
    and pinned / moved with the batch): the same losses step by step as the padded run, within
    float32 rounding (issue 23)."""
    import csv

    from cellmamba.train import data_collate

    # cells of 2-12 tokens (every other cell sparse)
    (tmp_path / "binned").mkdir()
    corpus = toy.write_corpus(tmp_path / "binned", "binned", density=np.resize([0.6, 0.12], toy.N_CELLS))
    base = toy.settings("scmamba2", backbone="bimamba_mamba2", match_backbone="bimamba_mamba2", d_model=32)
    plans = []

    def spy(*args, **kw):  # the plans the loader made (in this process: num_workers 0)
        plans.append(plan := real(*args, **kw))
        return plan

    real = data_collate.plan_packing
    losses = {}
    for pack in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(data_collate, "plan_packing", spy)
            run_pretraining(corpus, tmp_path / f"pack{pack}", config=PretrainConfig(**base, pack=pack),
                            gene_stats=inputs["gene_stats"], device="cpu")
        losses[pack] = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / f"pack{pack}" / "metrics.csv"))]
    # the loader buckets cells by length, so a batch's cells rarely share a row of its padded length;
    # the rows still end in empty tails of their own sequence index
    assert len(plans) == base["max_steps"] and any(not bool(p.mask.all()) for p in plans)
    assert len(losses[True]) == base["max_steps"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    # with a loader worker the plan is made there and moved with the batch
    run_pretraining(corpus, tmp_path / "worker", config=PretrainConfig(**base, pack=True, num_workers=1),
                    gene_stats=inputs["gene_stats"], device="cpu")
    worker = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "worker" / "metrics.csv"))]
    assert worker == pytest.approx(losses[True], rel=1e-6)


def test_token_budget_pretraining_takes_its_steps_in_passes(tmp_path, inputs):
    """models.<recipe>.max_tokens_per_pass through run_pretraining: every step's batch_size cells in
    passes within the budget (2 cells of <= 12 tokens here), the same number of cells per step as
    the unsplit run, the same run with a loader worker, and a first loss (initial weights) equal to
    the unsplit run's up to the weighting of the passes by cells."""
    import csv

    from cellmamba.train import data_collate

    base = toy.settings("genemamba")
    passes = []
    real = data_collate.TokenBudget.__call__

    def spy(self, items):
        out = real(self, items)
        passes.append([int(p["input_ids"].numel()) for p in out])
        return out

    rows = {}
    for name, extra in (("whole", {}), ("budget", {"max_tokens_per_pass": 24})):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(data_collate.TokenBudget, "__call__", spy)
            state = run_pretraining(inputs["genemamba"], tmp_path / name, config=PretrainConfig(**base, **extra),
                                    gene_stats=inputs["gene_stats"], device="cpu")
        rows[name] = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
        assert state.samples == base["max_steps"] * base["batch_size"]
    assert len(passes) == base["max_steps"] and all(len(p) >= 2 and max(p) <= 24 for p in passes)
    assert float(rows["budget"][0]["loss"]) == pytest.approx(float(rows["whole"][0]["loss"]), rel=0.05)
    run_pretraining(inputs["genemamba"], tmp_path / "worker",
                    config=PretrainConfig(**base, max_tokens_per_pass=24, num_workers=1),
                    gene_stats=inputs["gene_stats"], device="cpu")
    worker = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "worker" / "metrics.csv"))]
    assert worker == pytest.approx([float(r["loss"]) for r in rows["budget"]], rel=1e-6)
    with pytest.raises(InputError, match="max_tokens_per_pass.*context_length"):
        PretrainConfig(**{**base, "max_tokens_per_pass": 8})
    with pytest.raises(InputError, match="micro_batch_size.*max_tokens_per_pass"):
        PretrainConfig.from_workflow({"micro_batch_size": 2, "max_tokens_per_pass": 4096}, {}, name="genemamba")

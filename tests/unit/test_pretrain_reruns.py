"""Reruns lose nothing: a run that fails before logging leaves no empty metrics.csv (and an older
one as it was); max_steps can be raised to extend a finished run, while changes that do not fit the
checkpoints are refused with the key named and the exported model left as it was. (The pretrain
rule's own reruns through Snakemake: tests/workflow/test_pretrain_rule.py.)"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import _pretrain_toy as toy
from _train_toy import ToyModel, toy_loader, toy_objective
from cellmamba.errors import InputError
from cellmamba.train.checkpoint import list_checkpoints
from cellmamba.train.loop import TrainConfig, train
from cellmamba.train.pretrain import PretrainConfig, run_pretraining


def _toy_config(**kw) -> TrainConfig:
    base = dict(lr=0.05, warmup_steps=1, max_steps=4, batch_size=4, log_every=1, checkpoint_every=2,
                keep_checkpoints=None, seed=3, progress=False)
    return TrainConfig(**{**base, **kw})


def _failing_objective(model, batch):
    raise RuntimeError("out of memory (simulated)")


def test_a_run_failing_before_its_first_row_leaves_no_empty_metrics_file(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        train(ToyModel(), _failing_objective, toy_loader(4), _toy_config(), out_dir=out, eval_data=toy_loader(4))
    assert not (out / "metrics.csv").exists() and not (out / "eval_metrics.csv").exists()

    # an older curve (its checkpoints gone: a fresh start) is left as it was by a failed run...
    old = "step,epoch,loss\n1,0,9.5\n2,0,9.0\n"
    (out / "metrics.csv").write_text(old)
    with pytest.raises(RuntimeError, match="simulated"):
        train(ToyModel(), _failing_objective, toy_loader(4), _toy_config(), out_dir=out)
    assert (out / "metrics.csv").read_text() == old
    # ... and replaced by the first row of a run that trains
    train(ToyModel(), toy_objective, toy_loader(4), _toy_config(), out_dir=out)
    assert list(pd.read_csv(out / "metrics.csv").step) == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return toy.write_corpus(root, "rank"), toy.write_gene_stats(root / "gene_stats.tsv")


def _pretrain(run, corpus, **changes):
    manifest, gene_stats = corpus
    return run_pretraining(manifest, run, config=PretrainConfig(**toy.settings("genemamba", **changes)),
                           gene_stats=gene_stats, device="cpu")


def _model_bytes(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "model").iterdir())}


def test_raising_max_steps_extends_a_finished_run_from_its_last_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    _pretrain(run, corpus, max_steps=4)
    first = pd.read_csv(run / "metrics.csv")
    four = load_file(str(run / "model" / "model.safetensors"))
    assert list(first.step) == [1, 2, 3, 4]

    state = _pretrain(run, corpus, max_steps=6)
    assert state.step == 6 and state.resumed_from == str(run / "checkpoints" / "step_00000004")
    provenance = json.loads((run / "provenance.json").read_text())["config"]
    assert provenance["final_step"] == 6 and provenance["train"]["max_steps"] == 6
    assert json.loads((run / "pretrain_config.json").read_text())["config"]["max_steps"] == 6
    # the curve continues: each step once, the first run's rows as they were
    curve = pd.read_csv(run / "metrics.csv")
    assert list(curve.step) == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_frame_equal(curve.iloc[:4].drop(columns="tokens_per_s"), first.drop(columns="tokens_per_s"))
    # it started from the 4-step model (its checkpoint holds those weights) and trained on
    ckpt = load_file(str(run / "checkpoints" / "step_00000004" / "model" / "model.safetensors"))
    assert all(torch.equal(ckpt[k], four[k]) for k in four)
    six = load_file(str(run / "model" / "model.safetensors"))
    assert any(not torch.equal(six[k], four[k]) for k in four)
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step_00000006"


def test_changes_the_checkpoints_do_not_fit_are_refused_and_the_model_is_kept(tmp_path, corpus):
    run = tmp_path / "run"
    _pretrain(run, corpus)  # 6 steps
    before, curve = _model_bytes(run), (run / "metrics.csv").read_bytes()
    with pytest.raises(InputError, match=r"max_steps is 3, but the newest checkpoint is at step 6.*max_steps >= 6"):
        _pretrain(run, corpus, max_steps=3)
    with pytest.raises(InputError, match=r"another d_model \(8 -> 16\)"):
        _pretrain(run, corpus, d_model=16, max_steps=8)
    with pytest.raises(InputError, match=r"another lr \(0.0003 -> 0.001\)"):
        _pretrain(run, corpus, lr=1e-3)
    assert _model_bytes(run) == before and (run / "metrics.csv").read_bytes() == curve
    assert json.loads((run / "pretrain_config.json").read_text())["config"]["max_steps"] == 6

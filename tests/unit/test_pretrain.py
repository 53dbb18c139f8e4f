"""Wiring of one pretraining run: model per recipe, Transformer peers of the same size, the
resume guard, and config errors. (The demo test runs the whole thing on real data.)"""
from __future__ import annotations

import json

import pytest

from cellmamba.errors import InputError
from cellmamba.models import count_parameters
from cellmamba.train.pretrain import PretrainConfig, _guard_resume, build_pretrain_model


@pytest.mark.parametrize("recipe", ["genemamba", "scmamba2"])
def test_transformer_peer_has_the_same_size(recipe):
    kw = dict(recipe=recipe, d_model=32, n_layers=2, backend="torch")
    mamba = build_pretrain_model(PretrainConfig(**kw), n_genes=100)
    peer = build_pretrain_model(PretrainConfig(backbone="transformer", **kw), n_genes=100)
    assert peer.config.backbone.arch == "transformer"
    assert peer.config.backbone.d_model == mamba.config.backbone.d_model == 32
    assert peer.config.backbone.n_layers == mamba.config.backbone.n_layers == 2
    nb_m, nb_t = count_parameters(mamba.backbone), count_parameters(peer.backbone)
    assert abs(nb_t - nb_m) <= 0.10 * nb_m, (nb_m, nb_t)
    head = "value" if recipe == "scmamba2" else "gene"
    assert set(mamba.config.heads) == set(peer.config.heads) == {head}


def test_transformer_peer_cannot_take_next_token():
    with pytest.raises(InputError, match="next_token"):
        PretrainConfig(recipe="genemamba", backbone="transformer", lm="next_token")
    with pytest.raises(InputError, match="recipe"):
        PretrainConfig(recipe="scmamba")


def test_resume_guard_refuses_checkpoints_of_another_run(tmp_path):
    corpus = tmp_path / "manifest.json"
    corpus.write_text(json.dumps({"tokenizer": "binned"}))
    out = tmp_path / "run"
    out.mkdir()
    cfg = PretrainConfig(recipe="scmamba2", max_steps=10)
    _guard_resume(out, cfg, corpus, write=True)
    (out / "checkpoints" / "step_00000005").mkdir(parents=True)
    _guard_resume(out, cfg, corpus, write=True)  # same run: resuming is fine
    with pytest.raises(InputError, match="max_steps"):
        _guard_resume(out, PretrainConfig(recipe="scmamba2", max_steps=20), corpus, write=True)
    corpus.write_text(json.dumps({"tokenizer": "binned", "n_cells": 2}))
    with pytest.raises(InputError, match="corpus"):
        _guard_resume(out, cfg, corpus, write=True)

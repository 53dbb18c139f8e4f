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


@pytest.mark.parametrize("recipe", ["genemamba", "scmamba2"])
def test_transformer_peers_pad_their_batches_to_multiples_of_64(recipe):
    """A Transformer peer's batches come in lengths that are multiples of 64 (cuDNN attention plans
    per length); a Mamba model's are the longest cell's; a setting overrides both."""
    import numpy as np

    from cellmamba.train.pretrain import _collator

    tokens = np.arange(4, 4 + 70)  # one cell of 70 tokens
    item = {"tokens": tokens, "values": np.ones(70, dtype=np.uint8), "dataset": 0, "cell_index": 0}
    lengths, real = {}, set()
    for backbone, pad in (("transformer", None), ("bimamba_mamba2", None), ("transformer", 8)):
        config = PretrainConfig(recipe=recipe, backbone=backbone, pad_to_multiple=pad)
        batch = _collator(config, n_genes=100, rank=0)([item])
        lengths[backbone, pad] = batch["input_ids"].shape[1]
        real.add(int(batch["attention_mask"].sum()))
        assert batch["padded"] is (lengths[backbone, pad] > int(batch["attention_mask"].sum()))
    (n,) = real  # the same real tokens in every case
    assert n >= 70 and lengths == {("transformer", None): 128, ("bimamba_mamba2", None): n,
                                   ("transformer", 8): -(-n // 8) * 8}
    with pytest.raises(InputError, match="pad_to_multiple"):
        PretrainConfig(pad_to_multiple=0)


def test_padding_stops_at_the_learned_positions():
    """A rank Transformer peer of context 10,000 (not a multiple of 64) pads a 10,000-token cell
    to 10,000, the slots its model has, and the model reads the batch; shorter cells still round
    up to 64, and a token budget sizes its passes with the same capped length."""
    import numpy as np
    import torch

    from cellmamba.train.data_collate import TokenBudget
    from cellmamba.train.pretrain import _collator

    def item(n, i=0):
        return {"tokens": np.arange(4, 4 + n) % 90 + 4, "dataset": 0, "cell_index": i}

    config = PretrainConfig(recipe="genemamba", backbone="transformer", context_length=10000,
                            d_model=32, n_layers=1, backend="torch")
    collate = _collator(config, n_genes=100, rank=0)
    assert collate([item(10000)])["input_ids"].shape[1] == 10000  # was 10,048 > the 10,000 positions
    assert collate([item(9990)])["input_ids"].shape[1] == 10000  # 10,048 uncapped
    assert collate([item(70)])["input_ids"].shape[1] == 128
    model = build_pretrain_model(config, n_genes=100)
    batch = collate([item(10000)])
    with torch.no_grad():
        model(batch["input_ids"], attention_mask=batch["attention_mask"])
    # two cells of 9,990 + one of 10,000: capped passes of 10,000 tokens fit two cells in 20,000
    assert TokenBudget(collate, 20000).passes([9990, 10000, 9990]) == [[1, 0], [2]]
    # a Mamba model has no positions: no cap
    assert _collator(PretrainConfig(recipe="genemamba", context_length=10000, pad_to_multiple=64),
                     n_genes=100, rank=0)([item(9950)])["input_ids"].shape[1] == 9984


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
    with pytest.raises(InputError, match=r"another d_model \(512 -> 256\)"):
        _guard_resume(out, PretrainConfig(recipe="scmamba2", max_steps=10, d_model=256), corpus, write=True)
    with pytest.raises(InputError, match="max_steps is 4, but the newest checkpoint is at step 5"):
        _guard_resume(out, PretrainConfig(recipe="scmamba2", max_steps=4), corpus, write=True)
    _guard_resume(out, PretrainConfig(recipe="scmamba2", max_steps=20), corpus, write=True)  # extends the run
    assert json.loads((out / "pretrain_config.json").read_text())["config"]["max_steps"] == 20
    with pytest.raises(InputError, match="max_steps is 4"):  # compared with the newest checkpoint, not the record
        _guard_resume(out, PretrainConfig(recipe="scmamba2", max_steps=4), corpus, write=True)
    cfg = PretrainConfig(recipe="scmamba2", max_steps=20)
    corpus.write_text(json.dumps({"tokenizer": "binned", "n_cells": 2}))
    with pytest.raises(InputError, match="corpus"):
        _guard_resume(out, cfg, corpus, write=True)


def test_recipes_build_their_published_backbones_and_value_encoding():
    """SC-MAMBA2 sums the two directions in every layer and maps the bin continuously; GeneMamba
    gates them in every block; its next-token objective keeps one merge after the stack."""
    def built(**kw):
        m = build_pretrain_model(PretrainConfig(d_model=32, n_layers=2, backend="torch", **kw), n_genes=30)
        b, e = m.config.backbone, m.config.embedding
        return b.merge, b.merge_every, e.value_encoding, e.positions, e.max_len

    assert built(recipe="scmamba2") == ("sum", "layer", "continuous_norm", "none", 0)
    assert built(recipe="genemamba") == ("gate", "layer", "categorical", "none", 0)
    assert built(recipe="genemamba", lm="next_token") == ("gate", "stack", "categorical", "none", 0)
    assert built(recipe="scmamba2", merge="mean", merge_every="stack", value_encoding="categorical")[:3] == (
        "mean", "stack", "categorical")
    # the Transformer peers: learned positions on rank tokens (their order is the encoding), none on binned
    assert built(recipe="genemamba", backbone="transformer")[3:] == ("learned", 8192)
    assert built(recipe="genemamba", backbone="transformer", context_length=10000)[3:] == ("learned", 10000)
    assert built(recipe="scmamba2", backbone="transformer")[3:] == ("none", 0)
    with pytest.raises(InputError, match=r"pretrain\.genemamba_lm and models\.genemamba\.merge_every"):
        PretrainConfig(recipe="genemamba", lm="next_token", merge_every="layer")


def test_a_model_saved_before_the_merge_settings_loads_and_embeds_as_it_did(tmp_path):
    """Model directories written before merge / value_encoding / positions were settings (config
    keys absent): BackboneConfig's and EmbeddingConfig's defaults are the old behaviour, so the
    same weights give the same outputs."""
    import torch

    from cellmamba.models import CellModel

    torch.manual_seed(0)
    old = build_pretrain_model(PretrainConfig(recipe="scmamba2", d_model=32, n_layers=2, backend="torch", merge="mean",
                                              merge_every="stack", value_encoding="categorical"), n_genes=30)
    path = old.save_pretrained(tmp_path / "old")
    meta = json.loads((path / "config.json").read_text())
    for key in ("merge", "merge_every"):
        meta["config"]["backbone"].pop(key)
    for key in ("value_encoding", "positions", "max_len"):
        meta["config"]["embedding"].pop(key, None)
    (path / "config.json").write_text(json.dumps(meta))
    loaded = CellModel.from_pretrained(path, backend="torch").eval()
    assert (loaded.config.backbone.merge, loaded.config.backbone.merge_every) == ("mean", "stack")
    assert loaded.config.embedding.value_encoding == "categorical"
    ids = torch.randint(4, 34, (3, 9))
    ids[:, 0] = 1  # <cls>
    values = torch.randint(0, 51, (3, 9)).float()
    with torch.no_grad():
        a, b = old.eval()(ids, values), loaded(ids, values)
    torch.testing.assert_close(b.hidden, a.hidden, rtol=0, atol=0)


# --- a damaged token shard stops pretraining, naming the file ----------------------------------
def tiny_corpus(root, *, block_bytes):
    """Two binned shards of 16 cells over 40 genes, written with ``block_bytes`` blocks."""
    import dataclasses

    import numpy as np
    import scipy.sparse as sp

    from cellmamba.tokenize import BinnedConfig, ShardWriter, tokenize_binned, write_corpus_manifest
    from cellmamba.vocab import vocab_hash

    config = BinnedConfig(max_len=16)
    for s in range(2):
        rng = np.random.default_rng(s)
        X = sp.csr_matrix((rng.poisson(2.0, (16, 40)) * (rng.random((16, 40)) < 0.5)).astype(np.float32))
        batch = tokenize_binned(X, config)
        w = ShardWriter(root / str(s), values_dtype=np.uint8, block_bytes=block_bytes)
        w.append(np.diff(batch.offsets), batch.tokens, batch.values)
        w.finish(dataset=np.zeros(16, np.int32), measured=np.ones((1, 40), bool),
                 manifest={"tokenizer": "binned", "settings": dataclasses.asdict(config), "stats": {},
                           "vocab_hash": vocab_hash([f"G{j}" for j in range(40)]), "n_genes": 40, "datasets": ["A"],
                           "source": "test"})
    write_corpus_manifest([root / "0", root / "1"], root / "manifest.json")
    return root / "manifest.json"


TINY = dict(recipe="scmamba2", backbone="bimamba_mamba1", d_model=8, n_layers=1, d_state=4, context_length=16,
            batch_size=4, max_steps=3, warmup_steps=0, checkpoint_every=3, log_every=1, backend="torch")


def flip_byte(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["none", "changed_sampled", "changed_unsampled", "truncated"])
def test_pretraining_refuses_a_damaged_token_shard(tmp_path, monkeypatch, damage):
    """Before: a tokens.npy with changed bytes trained to completion. Now: a sampled block or a
    wrong size fails at open, before any step; a change in a block the open check did not draw
    fails through the full sha256 in the background, and no model is exported."""
    from cellmamba.errors import CorruptFileError
    from cellmamba.tokenize import shards
    from cellmamba.train.pretrain import run_pretraining

    monkeypatch.setattr(shards, "SAMPLED_BLOCKS", 0)  # the open check reads the first and last block only
    corpus = tiny_corpus(tmp_path / "corpus", block_bytes=32)
    f = tmp_path / "corpus" / "1" / "tokens.npy"
    size = f.stat().st_size
    assert size > 8 * 32  # many blocks: a middle one is not read at open
    out = tmp_path / "run"
    if damage == "none":
        state = run_pretraining(corpus, out, config=PretrainConfig(**TINY), device="cpu")
        assert state.step == 3 and (out / "model" / "model.safetensors").is_file()
        return
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[:-4])
        expected = rf"1/tokens\.npy: {size - 4} bytes, .*records {size} \(truncated\)"
    else:
        flip_byte(f, size - 2 if damage == "changed_sampled" else (size // 64) * 32 + 5)
        expected = (r"1/tokens\.npy: block \d+ .* \(changed bytes\)" if damage == "changed_sampled"
                    else r"1/tokens\.npy: sha256 [0-9a-f]{64}, .*records [0-9a-f]{64} \(changed bytes\)")
    with pytest.raises(CorruptFileError, match=expected):
        run_pretraining(corpus, out, config=PretrainConfig(**TINY), device="cpu")
    assert not (out / "model").exists()
    if damage != "changed_unsampled":  # found at open: no step ran
        assert not (out / "checkpoints").exists()


def test_loader_workers_leave_each_process_one_core():
    from cellmamba.train.pretrain import MAX_LOADER_WORKERS, loader_workers

    assert loader_workers(8, 1) == 7                      # the profile's 8 cores for one GPU
    assert loader_workers(16, 4) == 3                     # four ranks share 16 cores
    assert loader_workers(1, 1) == 0 and loader_workers(3, 4) == 0 and loader_workers(None) == 0
    assert loader_workers(64, 1) == MAX_LOADER_WORKERS


def test_unidirectional_ablation_is_the_recipe_s_mamba_forward_only(tmp_path):
    """genemamba_u (GeneMamba_U): the genemamba job's settings with the backward direction gone, so
    a gene's state depends on the genes before it only; the bidirectional model's does on later ones."""
    import torch

    import _pretrain_toy as toy
    from cellmamba.train.pretrain import run_pretraining, split_model_name

    assert split_model_name("genemamba_u") == ("genemamba", "_u")
    assert split_model_name("genemamba_transformer") == ("genemamba", "_transformer")
    model = {"backbone": "bimamba_mamba2", "d_model": 64, "n_layers": 2, "d_state": 8}
    pretrain = {"backend": "torch", "genemamba_lm": "masked_gene"}
    bi = PretrainConfig.from_workflow(model, pretrain, name="genemamba")
    uni = PretrainConfig.from_workflow(model, pretrain, name="genemamba_u")
    assert (bi.backbone, uni.backbone) == ("bimamba_mamba2", "mamba2")
    assert {k: v for k, v in vars(uni).items() if k not in ("backbone", "match_backbone")} == {
        k: v for k, v in vars(bi).items() if k not in ("backbone", "match_backbone")}
    torch.manual_seed(0)
    ids = torch.randint(4, 40, (1, 12))
    later = ids.clone()
    later[0, 8:] = torch.randint(4, 40, (4,))  # other genes after position 7
    for config, causal in ((uni, True), (bi, False)):
        net = build_pretrain_model(config, n_genes=40).eval()
        with torch.no_grad():
            a, b = (net(x).hidden for x in (ids, later))
        assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6) is causal, config.backbone
    with pytest.raises(InputError, match="unidirectional ablation needs a bidirectional"):
        PretrainConfig.from_workflow({**model, "backbone": "mamba2"}, pretrain, name="genemamba_u")
    # it pretrains and saves the unidirectional model
    corpus = toy.write_corpus(tmp_path, "rank")
    flat = toy.settings("genemamba", backbone="mamba1", match_backbone="mamba1", max_steps=2)
    run_pretraining(corpus, tmp_path / "run", config=PretrainConfig(**flat),
                    gene_stats=toy.write_gene_stats(tmp_path / "stats.tsv"), device="cpu")
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["config"]["backbone"]["arch"] == "mamba1", saved["config"]["backbone"]

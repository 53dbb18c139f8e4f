"""Whole models: embeddings for the three tokenizations, heads, save -> load, strict refusal."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.models import (
    BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig, load_state_dict_strict,
    next_token_logits, pool_cells,
)
from cellmamba.vocab import CLS_ID, N_SPECIAL, PAD_ID

VOCAB = N_SPECIAL + 40
HEADS = {
    "value": HeadConfig(kind="value_regression"),
    "gene": HeadConfig(kind="token_classification", n_out=VOCAB),
    "cls": HeadConfig(kind="classifier", n_out=3, pooling="cls", hidden=8),
    "proj": HeadConfig(kind="projection", n_out=6, pooling="last"),
}


def config(kind="binned", arch="bimamba_mamba2", **emb):
    return CellModelConfig(
        embedding=EmbeddingConfig(kind=kind, vocab_size=VOCAB, n_bins=6, patch_size=5, max_patches=16, **emb),
        backbone=BackboneConfig(arch=arch, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=8, n_heads=2,
                                merge="gate", backend="torch"),
        heads=HEADS,
    )


def batch(kind, lengths=(7, 12), seq_len=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(seq_len) < torch.tensor(lengths)[:, None]
    if kind == "patch":
        return torch.randn(len(lengths), seq_len, 5, generator=g), None, mask
    tokens = torch.randint(N_SPECIAL, VOCAB, (len(lengths), seq_len), generator=g)
    tokens[:, 0] = CLS_ID
    tokens[~mask] = PAD_ID
    values = torch.randint(1, 6, tokens.shape, generator=g)
    values[:, 0] = 0
    values[~mask] = 0
    return tokens, values, mask


EMBEDDINGS = [("rank", {}), ("binned", {}), ("binned", {"value_encoding": "continuous"}), ("patch", {})]


@pytest.mark.parametrize("kind,emb", EMBEDDINGS, ids=lambda v: str(v))
def test_padded_batch_equals_per_cell_runs_for_each_tokenization(kind, emb):
    torch.manual_seed(0)
    model = CellModel(config(kind, **emb)).double().eval()
    inputs, values, mask = batch(kind)
    if kind == "patch":
        inputs = inputs.double()
    with torch.no_grad():
        out = model(inputs, values, attention_mask=mask)
        for b, n in enumerate((7, 12)):
            one = model(inputs[b:b + 1, :n], None if values is None else values[b:b + 1, :n])
            torch.testing.assert_close(out.hidden[b, :n], one.hidden[0], rtol=1e-10, atol=1e-10)
            for name in ("cls", "proj"):
                torch.testing.assert_close(model.heads[name](out)[b], model.heads[name](one)[0], rtol=1e-10, atol=1e-10)


def test_default_mask_comes_from_pad_tokens():
    model = CellModel(config("rank")).eval()
    tokens, _, mask = batch("rank")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).hidden, model(tokens, attention_mask=mask).hidden)


def test_value_mask_hides_the_value():
    torch.manual_seed(0)
    model = CellModel(config("binned")).eval()
    tokens, values, mask = batch("binned")
    hide = torch.zeros_like(mask)
    hide[:, 3] = True
    other = values.clone()
    other[:, 3] = (values[:, 3] % 5) + 1
    with torch.no_grad():
        a = model(tokens, values, attention_mask=mask, value_mask=hide).hidden
        b = model(tokens, other, attention_mask=mask, value_mask=hide).hidden
        c = model(tokens, other, attention_mask=mask).hidden
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4


def test_heads_shapes_and_pooling():
    torch.manual_seed(0)
    model = CellModel(config("binned"))
    tokens, values, mask = batch("binned")
    out = model(tokens, values, attention_mask=mask)
    assert model.heads["value"](out).shape == (2, 12)
    assert model.heads["gene"](out).shape == (2, 12, VOCAB)
    assert model.heads["cls"](out).shape == (2, 3) and model.heads["proj"](out).shape == (2, 6)
    # BiMamba merged at the end of the stack: "cls" and "last" read each direction at its end
    ends = model.backbone.merge(out.forward[[0, 1], [6, 11]], out.reverse[:, 0])
    torch.testing.assert_close(pool_cells(out, "last"), ends)
    torch.testing.assert_close(pool_cells(out, "mean")[0], out.hidden[0, :7].mean(0))
    torch.testing.assert_close(pool_cells(out, "cls"), ends)
    nxt, prev = next_token_logits(model.heads["gene"], out)
    assert nxt.shape == prev.shape == (2, 12, VOCAB)


def test_next_token_logits_refuse_backbones_without_causal_directions():
    model = CellModel(config("rank", arch="transformer"))
    tokens, _, mask = batch("rank")
    with pytest.raises(InputError, match="causal"):
        next_token_logits(model.heads["gene"], model(tokens, attention_mask=mask))


def test_next_token_loss_on_structureless_sequences_stays_near_log_vocabulary():
    """Trained briefly on random tokens, the leak-free bidirectional next-token loss cannot beat chance by much."""
    torch.manual_seed(0)
    model = CellModel(config("rank"))
    head = model.heads["gene"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):  # enough for the merged (leaky) states to reach ~2.2 nats: they can copy the answer
        tokens = torch.randint(N_SPECIAL, VOCAB, (8, 24), generator=g)
        nxt, prev = next_token_logits(head, model(tokens))
        loss = 0.5 * (torch.nn.functional.cross_entropy(nxt[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
                      + torch.nn.functional.cross_entropy(prev[:, 1:].reshape(-1, VOCAB), tokens[:, :-1].reshape(-1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() > math.log(VOCAB - N_SPECIAL) - 0.3, loss.item()


@pytest.mark.parametrize("kind,arch", [("binned", "bimamba_mamba2"), ("rank", "bimamba_mamba1"), ("patch", "transformer")])
def test_save_load_gives_identical_outputs(tmp_path, kind, arch):
    torch.manual_seed(0)
    model = CellModel(config(kind, arch)).eval()
    path = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    meta = json.loads((path / "config.json").read_text())
    assert meta["format"] == "cellmamba.CellModel" and meta["config"]["backbone"]["arch"] == arch
    loaded = CellModel.from_pretrained(path).eval()
    assert loaded.config == model.config
    inputs, values, mask = batch(kind)
    with torch.no_grad():
        a, b = model(inputs, values, attention_mask=mask), loaded(inputs, values, attention_mask=mask)
        assert torch.equal(a.hidden, b.hidden)
        for name in HEADS:
            assert torch.equal(model.heads[name](a), loaded.heads[name](b))


def test_save_overwrites_atomically_and_backend_can_be_overridden(tmp_path):
    model = CellModel(config("rank"))
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # replacing an existing directory works
    loaded = CellModel.from_pretrained(tmp_path / "m", backend="torch")
    assert loaded.config.backbone.backend == "torch"


def test_wrong_shapes_missing_and_unexpected_keys_are_refused_by_name(tmp_path):
    model = CellModel(config("binned"))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["backbone.layers.0.mixer.in_proj.weight"] = torch.zeros(3, 16)
    del sd["backbone.layers.1.mixer.A_log"]
    sd["backbone.layers.9.extra"] = torch.zeros(1)
    with pytest.raises(InputError) as err:
        load_state_dict_strict(model, sd, source="x.safetensors")
    msg = str(err.value)
    assert "x.safetensors" in msg
    assert "missing keys: backbone.layers.1.mixer.A_log" in msg
    assert "unexpected keys: backbone.layers.9.extra" in msg
    assert "backbone.layers.0.mixer.in_proj.weight (checkpoint (3, 16), model (84, 16))" in msg

    path = model.save_pretrained(tmp_path / "m")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    with pytest.raises(InputError, match="missing keys"):
        CellModel.from_pretrained(path)


def test_damaged_or_foreign_directories_are_refused(tmp_path):
    model = CellModel(config("rank"))
    path = model.save_pretrained(tmp_path / "m")
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        CellModel.from_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="config.json"):
        CellModel.from_pretrained(path)
    meta = {"format": "cellmamba.CellModel", "format_version": 1,
            "config": {**config("rank").to_dict(), "backbone": {"arch": "bimamba_mamba2", "d_modle": 16}}}
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="unknown keys \\['d_modle'\\]"):
        CellModel.from_pretrained(path)
    with pytest.raises(InputError, match="no such file"):
        CellModel.from_pretrained(tmp_path / "absent")


def test_embedding_inputs_are_checked():
    model = CellModel(config("binned"))
    tokens, values, mask = batch("binned")
    with pytest.raises(InputError, match="token ids must be in"):
        model(tokens + VOCAB, values, attention_mask=mask)
    with pytest.raises(InputError, match="bin indices"):
        model(tokens, values + 10, attention_mask=mask)
    with pytest.raises(InputError, match="need values"):
        model(tokens, attention_mask=mask)
    with pytest.raises(InputError, match="patch inputs"):
        CellModel(config("patch"))(torch.randn(2, 4, 3))
    with pytest.raises(InputError, match="vocab_size"):
        EmbeddingConfig(kind="rank")

"""Learned absolute positions on token inputs (issue 18): a Transformer on rank tokens sees their
order only through them; without them it is permutation-equivariant. Old configs load unchanged."""
from __future__ import annotations

import json

import pytest
import torch

from cellmamba.errors import InputError
from cellmamba.models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, count_parameters
from cellmamba.models.embeddings import positions_for
from cellmamba.vocab import N_SPECIAL, PAD_ID

VOCAB = N_SPECIAL + 40
D_MODEL, MAX_LEN = 16, 12


def backbone(arch="transformer"):
    return BackboneConfig(arch=arch, d_model=D_MODEL, n_layers=2, d_state=8, headdim=8, chunk_size=8, n_heads=2,
                          backend="torch")


def model(positions="none", *, kind="rank", arch="transformer", max_len=MAX_LEN, seed=0):
    torch.manual_seed(seed)
    emb = EmbeddingConfig(kind=kind, vocab_size=VOCAB, n_bins=6, positions=positions, max_len=max_len)
    return CellModel(CellModelConfig(embedding=emb, backbone=backbone(arch))).double().eval()


def tokens(lengths=(7, 12), seq_len=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(seq_len) < torch.tensor(lengths)[:, None]
    ids = torch.randperm(VOCAB - N_SPECIAL, generator=g)[:seq_len].repeat(len(lengths), 1) + N_SPECIAL
    ids[~mask] = PAD_ID
    return ids, mask


def swapped(ids, i, j):
    out = ids.clone()
    out[:, [i, j]] = ids[:, [j, i]]
    return out


def mean_pool(hidden):
    return hidden.mean(dim=1)


def test_without_positions_a_transformer_is_permutation_equivariant():
    m = model("none")
    ids, _ = tokens(lengths=(12,))
    with torch.no_grad():
        a = m(ids).hidden[0]
        b = m(swapped(ids, 2, 9)).hidden[0]
    # swapping two tokens swaps their output rows and leaves every other row as it was
    torch.testing.assert_close(b[[9, 2]], a[[2, 9]], rtol=1e-10, atol=1e-10)
    rest = [k for k in range(12) if k not in (2, 9)]
    torch.testing.assert_close(b[rest], a[rest], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(mean_pool(b[None]), mean_pool(a[None]), rtol=1e-10, atol=1e-10)


def test_with_learned_positions_a_transformer_sees_the_order():
    m = model("learned")
    ids, _ = tokens(lengths=(12,))
    with torch.no_grad():
        a = m(ids).hidden[0]
        b = m(swapped(ids, 2, 9)).hidden[0]
    assert (b[[9, 2]] - a[[2, 9]]).abs().max() > 1e-3
    assert (mean_pool(b[None]) - mean_pool(a[None])).abs().max() > 1e-4


def test_learned_positions_padded_batch_equals_per_cell_runs():
    m = model("learned")
    ids, mask = tokens(lengths=(7, 12))
    with torch.no_grad():
        out = m(ids, attention_mask=mask)
        for b, n in enumerate((7, 12)):
            one = m(ids[b:b + 1, :n])
            torch.testing.assert_close(out.hidden[b, :n], one.hidden[0], rtol=1e-10, atol=1e-10)
        assert torch.equal(out.hidden[0, 7:], torch.zeros_like(out.hidden[0, 7:]))
        # <pad> tokens get no position: the embedding there is what it is without positions
        emb = m.embed(ids)
        assert torch.equal(emb[0, 7:], torch.zeros_like(emb[0, 7:]))


def test_position_table_is_max_len_by_d_model():
    with_pos, without = model("learned"), model("none")
    assert tuple(with_pos.embed.position.weight.shape) == (MAX_LEN, D_MODEL)
    assert "embed.position.weight" in with_pos.state_dict() and "embed.position.weight" not in without.state_dict()
    assert count_parameters(with_pos) - count_parameters(without) == MAX_LEN * D_MODEL
    assert count_parameters(with_pos.backbone) == count_parameters(without.backbone)


def test_learned_positions_also_apply_to_binned_inputs():
    m = model("learned", kind="binned")
    ids, _ = tokens(lengths=(12,))
    values = torch.randint(1, 6, ids.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = m(ids, values).hidden[0]
        b = m(swapped(ids, 2, 9), swapped(values, 2, 9)).hidden[0]
    assert (b[[9, 2]] - a[[2, 9]]).abs().max() > 1e-3


def test_positions_for_gives_learned_to_rank_transformers_only():
    assert positions_for("rank", "transformer") == "learned"
    for kind, arch in [("binned", "transformer"), ("patch", "transformer"), ("rank", "bimamba_mamba2"),
                       ("rank", "mamba1"), ("binned", "bimamba_mamba2")]:
        assert positions_for(kind, arch) == "none", (kind, arch)
    for kind, arch in [("rank", "transformer"), ("binned", "transformer")]:
        m = model(positions_for(kind, arch), kind=kind, arch=arch)
        assert m.config.embedding.positions == ("learned" if kind == "rank" else "none")
        assert hasattr(m.embed, "position") == (kind == "rank")
    with pytest.raises(InputError, match="kind"):
        positions_for("ranked", "transformer")
    with pytest.raises(InputError, match="backbone_arch"):
        positions_for("rank", "bert")


def test_old_config_without_the_keys_loads_with_no_positions_and_identical_outputs(tmp_path):
    m = model("none")
    path = m.float().save_pretrained(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    assert meta["config"]["embedding"]["positions"] == "none"
    for key in ("positions", "max_len"):  # a config.json written before the setting existed
        del meta["config"]["embedding"][key]
    (path / "config.json").write_text(json.dumps(meta))
    loaded = CellModel.from_pretrained(path).eval()
    assert loaded.config.embedding.positions == "none" and loaded.config.embedding.max_len == 0
    assert not hasattr(loaded.embed, "position")
    ids, mask = tokens()
    with torch.no_grad():
        assert torch.equal(m(ids, attention_mask=mask).hidden, loaded(ids, attention_mask=mask).hidden)


def test_learned_positions_save_and_load(tmp_path):
    m = model("learned").float()
    loaded = CellModel.from_pretrained(m.save_pretrained(tmp_path / "m")).eval()
    assert loaded.config.embedding.positions == "learned" and loaded.config.embedding.max_len == MAX_LEN
    ids, mask = tokens()
    with torch.no_grad():
        assert torch.equal(m(ids, attention_mask=mask).hidden, loaded(ids, attention_mask=mask).hidden)


def test_sequences_longer_than_max_len_are_refused():
    m = model("learned", max_len=8)
    ids, _ = tokens(lengths=(9,), seq_len=9)
    with pytest.raises(InputError, match="max_len=8"):
        m(ids)
    m(ids[:, :8])  # up to max_len is fine


@pytest.mark.parametrize("kw,key", [
    (dict(positions="sinusoidal"), "positions"),
    (dict(positions="learned"), "max_len"),
    (dict(positions="learned", max_len=0), "max_len"),
    (dict(positions="learned", max_len=8.0), "max_len"),
    (dict(kind="patch", positions="learned", max_len=8), "positions"),
])
def test_invalid_settings_name_the_key(kw, key):
    kw = {"kind": "rank", "vocab_size": VOCAB, **kw}
    with pytest.raises(InputError, match=key):
        EmbeddingConfig(**kw)

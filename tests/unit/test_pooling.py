"""Cell pooling cannot be constant (issue 18): every direction contributes a state that has read
the whole cell, in padded batches too.

With merge_every="stack", position 0's forward state has read token 0 only and the last token's
reverse state the last token only; "cls" and "last" pooling must read each direction at its end.
"""
from __future__ import annotations

import pytest
import torch

from cellmamba.models import (
    Backbone, BackboneConfig, CellModel, CellModelConfig, ClassifierHead, EmbeddingConfig, HeadConfig, pool_cells,
)
from cellmamba.tasks.finetune import FinetuneConfig, _pooled_output, embed_cells, resolve_pooling
from cellmamba.vocab import CLS_ID, N_SPECIAL, PAD_ID

f64 = torch.float64
SEQ_LEN = 16
LENGTHS = (14, 14, 9)  # cells 0 and 1 differ only at 1..12; cell 2 is padded
MODES = ("cls", "mean", "last")


def small(arch, **kw):
    base = dict(arch=arch, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=8, n_heads=2, backend="torch")
    return BackboneConfig(**{**base, **kw})


CASES = [small(a, merge=m, merge_every=e) for a, m in (("bimamba_mamba2", "gate"), ("bimamba_mamba1", "mean"))
         for e in ("stack", "layer")]
CASES += [small("mamba2"), small("mamba1"), small("transformer")]
STACKED = [c for c in CASES if c.arch != "transformer" and not (c.bidirectional and c.merge_every == "layer")]


def _id(c):
    return f"{c.arch}-{c.merge}-{c.merge_every}" if c.bidirectional else c.arch


def cells(seed=0):
    """x: (3, SEQ_LEN, 16): the same first AND last real token in every cell, cells 0 and 1
    different in between; loud padding after cell 2's 9 tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LENGTHS), SEQ_LEN, 16, generator=g, dtype=f64)
    x[:, 0] = x[0, 0]
    for b, n in enumerate(LENGTHS):
        x[b, n - 1] = x[0, LENGTHS[0] - 1]
    mask = torch.arange(SEQ_LEN) < torch.tensor(LENGTHS)[:, None]
    x[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16, generator=g, dtype=f64)
    return x, mask


def run(config, x, mask=None):
    torch.manual_seed(0)
    model = Backbone(config).double().eval()
    with torch.no_grad():
        return model, model(x, mask)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", CASES, ids=_id)
def test_pooled_cell_changes_when_only_its_inner_tokens_change_and_ignores_padding(config, mode):
    x, mask = cells()
    model, out = run(config, x, mask)
    pooled = pool_cells(out, mode)
    assert pooled.shape == (3, 16)
    assert (pooled[0] - pooled[1]).abs().max() > 1e-6, "cells differing after position 0 pool alike"
    with torch.no_grad():
        for b, n in enumerate(LENGTHS):  # the padded batch against a per-cell loop
            alone = pool_cells(model(x[b:b + 1, :n]), mode)[0]
            torch.testing.assert_close(pooled[b], alone, rtol=1e-10, atol=1e-10, msg=f"cell {b}")


@pytest.mark.parametrize("mode", ("cls", "last"))
@pytest.mark.parametrize("config", STACKED, ids=_id)
def test_cls_and_last_read_each_direction_where_it_has_seen_the_whole_cell(config, mode):
    """By hand from the output's direction states: merge(forward[last real], reverse[0]); and
    each of the two parts differs between cells that share their first and last tokens, so
    neither half of the pooled vector is a constant (the old hidden[:, 0] / hidden[:, last]
    gives a forward / reverse part that is the same for every such cell)."""
    x, mask = cells()
    model, out = run(config, x, mask)
    last = torch.tensor(LENGTHS) - 1
    fwd = out.forward[torch.arange(3), last]
    if config.bidirectional:
        rev = out.reverse[:, 0]
        with torch.no_grad():
            want = model.merge(fwd, rev)
        assert (rev[0] - rev[1]).abs().max() > 1e-6, "reverse part constant"
    else:
        want = fwd
    assert (fwd[0] - fwd[1]).abs().max() > 1e-6, "forward part constant"
    torch.testing.assert_close(pool_cells(out, mode), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.cls, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", [c for c in CASES if c not in STACKED], ids=_id)
def test_where_position_0_sees_the_whole_cell_pooling_reads_hidden(config):
    x, mask = cells()
    _, out = run(config, x, mask)
    assert out.cls is None
    torch.testing.assert_close(pool_cells(out, "cls"), out.hidden[:, 0])
    torch.testing.assert_close(pool_cells(out, "last"), out.hidden[torch.arange(3), torch.tensor(LENGTHS) - 1])


@pytest.mark.parametrize("config", STACKED, ids=_id)
def test_a_cell_without_real_tokens_pools_to_zero(config):
    x, mask = cells()
    mask[2] = False
    _, out = run(config, x, mask)
    for mode in MODES:
        assert torch.all(pool_cells(out, mode)[2] == 0), mode
        assert torch.all(torch.isfinite(pool_cells(out, mode)))


def _binned_model(arch="bimamba_mamba2", merge_every="stack"):
    torch.manual_seed(0)
    vocab = N_SPECIAL + 30
    return CellModel(CellModelConfig(
        embedding=EmbeddingConfig(kind="binned", vocab_size=vocab, n_bins=6),
        backbone=small(arch, merge="gate", merge_every=merge_every),
        heads={"classifier": HeadConfig(kind="classifier", n_out=3, pooling="cls")})).eval()


def _binned_batch(n_cells=4, seed=0):
    """CLS first (bin 0) in every cell, right-padded to different lengths."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([10, 7, 10, 4][:n_cells])
    mask = torch.arange(10) < lengths[:, None]
    tokens = torch.randint(N_SPECIAL, N_SPECIAL + 30, (n_cells, 10), generator=g)
    values = torch.randint(1, 6, (n_cells, 10), generator=g)
    tokens[:, 0], values[:, 0] = CLS_ID, 0
    tokens[~mask], values[~mask] = PAD_ID, 0
    return tokens, values, mask


def test_recipe_auto_pooling_of_binned_cells_is_the_fixed_cls_in_heads_and_embeddings():
    """scmamba2's "auto" (binned: cls) -> the classifier head and embed_cells read
    merge(forward[last real], reverse[CLS]), not the CLS position's merged state."""
    pooling = resolve_pooling(FinetuneConfig(), "binned")
    assert pooling == "cls"
    model = _binned_model()
    tokens, values, mask = _binned_batch()
    with torch.no_grad():
        out = model(tokens, values, attention_mask=mask)
        last = mask.sum(1) - 1
        want = model.backbone.merge(out.forward[torch.arange(4), last], out.reverse[:, 0])
        head = model.heads["classifier"]
        torch.testing.assert_close(head(out), head.mlp(want))
    assert (want.std(0) > 0).all()

    data = list(range(4))

    def collate(idx):
        return {"input_ids": tokens[idx], "values": values[idx], "attention_mask": mask[idx],
                "value_mask": torch.zeros_like(mask[idx])}

    emb, logits = embed_cells(model, data, collate, pooling=pooling, batch_size=3, device="cpu", classifier=True,
                              progress=False)
    torch.testing.assert_close(torch.from_numpy(emb), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(logits), head.mlp(want).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_a_head_reading_an_already_pooled_embedding_gets_it_unchanged(mode):
    """The adversarial batch head reads the pooled (gradient-reversed) embedding as (B, 1, d)."""
    torch.manual_seed(0)
    head = ClassifierHead(16, 3, pooling=mode)
    emb = torch.randn(5, 16)
    torch.testing.assert_close(head(_pooled_output(emb)), head.mlp(emb))

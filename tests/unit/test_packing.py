"""Packed rows (issue 23): the plan on a hand-made case, pack / unpack, and the backbone on packed
rows computing what each cell computes alone (the reference path; the CUDA kernels are compared in
tests/gpu), forward and backward, for every architecture that packs."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from cellmamba.errors import InputError
from cellmamba.models import Backbone, BackboneConfig, plan_packing
from cellmamba.models._ref import ssd_scan_ref
from cellmamba.models.ssm import _causal_conv


def test_plan_packing_first_fit_decreasing_hand_case():
    # lengths 5, 2, 0, 3, 4 into rows of 6: longest first -> [b0] [b4, b1] [b3]; the empty cell takes no room
    p = plan_packing([5, 2, 0, 3, 4], 6)
    assert p.n_rows == 3 and p.row_len == 6 and (p.batch, p.seq_len) == (5, 5)
    assert p.seq_idx.tolist() == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert p.rev.tolist() == [[4, 3, 2, 1, 0, 5], [3, 2, 1, 0, 5, 4], [2, 1, 0, 5, 4, 3]]
    assert p.mask.tolist() == [[True] * 5 + [False], [True] * 6, [True] * 3 + [False] * 3]
    # cell b1 (2 tokens) sits at row 1, positions 4-5; padded position b * 5 + t
    src, dst = p.src.tolist(), p.dst.tolist()
    assert dict(zip(dst, src))[1 * 5 + 0] == 1 * 6 + 4 and dict(zip(dst, src))[1 * 5 + 1] == 1 * 6 + 5
    assert sorted(dst) == [0, 1, 2, 3, 4, 5, 6, 15, 16, 17, 20, 21, 22, 23]


def test_plan_packing_refuses_a_cell_longer_than_a_row():
    with pytest.raises(InputError, match="a cell of 7 tokens does not fit a row of 6"):
        plan_packing([7, 2], 6)


def test_pack_unpack_round_trip_zeroes_padding_only():
    torch.manual_seed(0)
    lengths = [3, 7, 1, 5]
    p = plan_packing(lengths, 8, seq_len=7)
    x = torch.randn(4, 7, 3)
    mask = torch.arange(7) < torch.tensor(lengths)[:, None]
    packed = p.pack(x)
    assert packed.shape == (p.n_rows, 8, 3)
    assert torch.equal(packed[~p.mask], torch.zeros_like(packed[~p.mask]))
    assert torch.equal(p.unpack(packed), x * mask[..., None])


def _segments(seq_idx_row):
    out, start = [], 0
    for t in range(1, len(seq_idx_row) + 1):
        if t == len(seq_idx_row) or seq_idx_row[t] != seq_idx_row[start]:
            out.append(slice(start, t))
            start = t
    return out


@pytest.mark.parametrize("chunk_size", [3, 4, 64])
def test_ssd_and_conv_references_with_seq_idx_match_each_sequence_alone(chunk_size):
    torch.manual_seed(0)
    b, L, h, p, g, n = 2, 13, 4, 3, 2, 5
    seq_idx = torch.tensor([[0] * 4 + [1] * 6 + [2] * 3, [0] * 2 + [1] * 11])
    x = torch.randn(b, L, h, p, dtype=torch.float64)
    dt = torch.rand(b, L, h, dtype=torch.float64)
    A = -torch.rand(h, dtype=torch.float64) - 0.1
    B, C = torch.randn(b, L, g, n, dtype=torch.float64), torch.randn(b, L, g, n, dtype=torch.float64)
    D = torch.randn(h, dtype=torch.float64)
    y = ssd_scan_ref(x, dt, A, B=B, C=C, D=D, chunk_size=chunk_size, seq_idx=seq_idx)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    u = torch.randn(b, L, 6, dtype=torch.float64)
    yc = _causal_conv(conv, u, seq_idx)
    for r in range(b):
        for sl in _segments(seq_idx[r].tolist()):
            alone = ssd_scan_ref(x[r:r + 1, sl], dt[r:r + 1, sl], A, B=B[r:r + 1, sl], C=C[r:r + 1, sl], D=D,
                                 chunk_size=chunk_size)
            torch.testing.assert_close(y[r:r + 1, sl], alone, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(yc[r:r + 1, sl], _causal_conv(conv, u[r:r + 1, sl]), rtol=1e-12, atol=1e-12)


ARCHS = [
    BackboneConfig(arch="bimamba_mamba2", merge="gate", merge_every="stack"),
    BackboneConfig(arch="bimamba_mamba2", merge="sum", merge_every="layer"),
    BackboneConfig(arch="mamba2"),
    BackboneConfig(arch="transformer", n_heads=4),
]


def _small(cfg):
    return dataclasses.replace(cfg, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=4, backend="torch")


@pytest.mark.parametrize("config", ARCHS, ids=lambda c: f"{c.arch}-{c.merge_every}")
def test_packed_backbone_computes_each_cell_alone_forward_and_backward(config):
    torch.manual_seed(0)
    model = Backbone(_small(config)).double()
    lengths = [6, 3, 9, 1, 4]
    L = max(lengths)
    x = torch.randn(len(lengths), L, 16, dtype=torch.float64)
    mask = torch.arange(L) < torch.tensor(lengths)[:, None]
    packing = plan_packing(lengths, 10, seq_len=L)
    assert packing.n_rows < len(lengths)                    # cells do share rows
    out = model(x, mask, packing=packing)
    for b, n in enumerate(lengths):
        alone = model(x[b:b + 1, :n])
        torch.testing.assert_close(out.hidden[b, :n], alone.hidden[0], rtol=1e-9, atol=1e-9)
        assert torch.equal(out.hidden[b, n:], torch.zeros_like(out.hidden[b, n:]))
        for name in ("forward", "reverse", "cls"):
            got, ref = getattr(out, name), getattr(alone, name)
            assert (got is None) == (ref is None), name
            if got is not None:
                torch.testing.assert_close(got[b, :n] if name != "cls" else got[b], ref[0, :n] if name != "cls"
                                           else ref[0], rtol=1e-9, atol=1e-9)
    # the gradient of a loss on the states is the padded batch's (which runs no packing)
    w = torch.randn_like(out.hidden)
    grads = torch.autograd.grad((out.hidden * w).sum(), list(model.parameters()))
    padded = model(x, mask)
    ref_grads = torch.autograd.grad((padded.hidden * w).sum(), list(model.parameters()))
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=name)


def test_packed_mamba1_is_refused():
    model = Backbone(_small(BackboneConfig(arch="bimamba_mamba1")))
    with pytest.raises(InputError, match="Mamba1 layers cannot run packed rows"):
        model(torch.randn(2, 3, 16), packing=plan_packing([3, 2], 5, seq_len=3))

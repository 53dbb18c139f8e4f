"""The fused CUDA path (cellmamba.models._fused) against independent computations.

- the fused residual-add + RMSNorm against the naive float64 formula and its autograd gradients,
  on enough rows that the widened backward grid gives each program several rows and a ragged tail;
- whole backbones on the fused path against the same weights on mamba_ssm's own path
  (CELLMAMBA_FUSED=0) and on the pure-PyTorch reference, forward and backward (input and every
  parameter), fp32 and bf16 autocast, padded batches, every Mamba arch and both BiMamba forms.

Marked ``gpu``: skipped at collection without CUDA and mamba_ssm (tests/conftest.py).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cellmamba.models import Backbone, BackboneConfig, kernels_available
from cellmamba.models import _fused

pytestmark = pytest.mark.gpu
DEV = "cuda"
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@pytest.fixture
def fused_on():
    x = torch.zeros(1, device=DEV)
    if not _fused.available(x):
        pytest.skip("fused path unavailable here (needs compiled causal_conv1d and mamba_ssm in "
                    f"{_fused.TESTED_MAMBA})")


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_matches_formula(fused_on, x_dtype, with_residual):
    torch.manual_seed(0)
    M, N, eps = 9_001, 512, 1e-5  # 9,001 rows: several per program and a short last program
    x = torch.randn(M, N, device=DEV).to(x_dtype).requires_grad_()
    res = torch.randn(M, N, device=DEV, requires_grad=True) if with_residual else None
    w = (1 + 0.1 * torch.randn(N, device=DEV)).requires_grad_()
    y, r = _fused.add_rms_norm(x, res, w, eps)
    gy = torch.randn_like(y)
    gr = torch.randn(M, N, device=DEV)
    (y.float() * gy.float()).sum().add_((r * gr).sum()).backward()

    x64 = x.detach().double().requires_grad_()
    res64 = res.detach().double().requires_grad_() if with_residual else None
    w64 = w.detach().double().requires_grad_()
    r_ref = x64 + res64 if with_residual else x64
    y_ref = r_ref * torch.rsqrt(r_ref.square().mean(-1, keepdim=True) + eps) * w64
    ((y_ref * gy.double()).sum() + (r_ref * gr.double()).sum()).backward()

    assert r.dtype == torch.float32 and y.dtype == x_dtype
    tol = TOL[x_dtype] / 10
    assert rel_err(r, r_ref) < 1e-6
    assert rel_err(y, y_ref) < tol
    assert rel_err(x.grad, x64.grad) < tol
    assert rel_err(w.grad, w64.grad) < 1e-4  # float32 partial sums over 9,001 rows
    if with_residual:
        assert rel_err(res.grad, res64.grad) < 1e-5


def run(model, x, mask, dtype):
    xi = x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = model(xi, mask)
    weights = torch.linspace(-1, 1, out.hidden.numel(), device=DEV).view_as(out.hidden)
    (out.hidden.float() * weights).sum().backward()
    grads = {"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return out.hidden.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# genemamba's form (gate in every layer), scmamba2's (sum in every layer), a gate after the stack
@pytest.mark.parametrize("arch,merge_every,merge", [
    ("bimamba_mamba2", "stack", "gate"), ("bimamba_mamba2", "layer", "gate"), ("bimamba_mamba2", "layer", "sum"),
    ("mamba2", "stack", "gate"), ("bimamba_mamba1", "stack", "gate")])
def test_fused_backbone_matches_mamba_ssm_path_and_reference(fused_on, monkeypatch, arch, merge_every, merge, dtype):
    need = "mamba1" if arch.endswith("mamba1") else "mamba2"
    ok, reason = kernels_available(need)
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    cfg = BackboneConfig(arch=arch, d_model=64, n_layers=2, d_state=16, headdim=32, chunk_size=64,
                         merge=merge, merge_every=merge_every, backend="cuda")
    fused = Backbone(cfg).to(DEV)
    plain = Backbone(cfg).to(DEV)
    ref = Backbone(dataclasses.replace(cfg, backend="torch")).to(DEV)
    plain.load_state_dict(fused.state_dict())
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(3, 333, 64, device=DEV)
    mask = torch.arange(333, device=DEV) < torch.tensor([[333], [200], [1]], device=DEV)

    out_f, g_f = run(fused, x, mask, dtype)
    monkeypatch.setenv("CELLMAMBA_FUSED", "0")
    assert not _fused.available(x)
    out_p, g_p = run(plain, x, mask, dtype)
    out_r, g_r = run(ref, x, mask, torch.float32)

    assert (out_f[~mask] == 0).all()
    assert rel_err(out_f, out_p) < TOL[dtype]
    assert rel_err(out_f, out_r) < TOL[dtype]
    for name in g_r:
        assert g_f[name] is not None, name
        assert rel_err(g_f[name], g_p[name]) < 5 * TOL[dtype], name
        assert rel_err(g_f[name], g_r[name]) < 5 * TOL[dtype], name


def test_recompute_matches_kept_activations(fused_on):
    """recompute=True recomputes the conv output and the SSD states in the backward pass: the same
    kernels on the same inputs, so the same outputs and gradients (up to atomic-add order)."""
    ok, reason = kernels_available("mamba2")
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    cfg = BackboneConfig(arch="bimamba_mamba2", d_model=64, n_layers=2, d_state=16, headdim=32, chunk_size=64,
                         backend="cuda")
    kept = Backbone(cfg).to(DEV)
    recomputed = Backbone(dataclasses.replace(cfg, recompute=True)).to(DEV)
    recomputed.load_state_dict(kept.state_dict())
    assert all(m.recompute for m in recomputed.modules() if hasattr(m, "recompute"))
    x = torch.randn(2, 300, 64, device=DEV)
    mask = torch.arange(300, device=DEV) < torch.tensor([[300], [123]], device=DEV)
    for dtype in (torch.float32, torch.bfloat16):
        out_k, g_k = run(kept, x, mask, dtype)
        out_r, g_r = run(recomputed, x, mask, dtype)
        assert rel_err(out_r, out_k) < 1e-6
        for name in g_k:
            assert rel_err(g_r[name], g_k[name]) < 1e-5, name
        kept.zero_grad(set_to_none=True)
        recomputed.zero_grad(set_to_none=True)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_dcb_ddA_kernel_matches_mamba_ssm_kernels(fused_on, ngroups):
    """cellmamba.models._ssd against the two mamba_ssm kernels it replaces, at the benchmark's layer
    shapes (headdim 64, chunk 256, d_state 128, bf16) with a short last chunk."""
    from mamba_ssm.ops.triton.ssd_bmm import _bmm_chunk_fwd
    from mamba_ssm.ops.triton.ssd_chunk_scan import _chunk_scan_bwd_dcb, _chunk_scan_bwd_ddAcs_stable
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd

    from cellmamba.models import _ssd

    torch.manual_seed(0)
    b, L, nheads, headdim, dstate, chunk = 2, 1000, 16, 64, 128, 256
    x = torch.randn(b, L, nheads, headdim, device=DEV, dtype=torch.bfloat16)
    dout = torch.randn_like(x)
    Bm = torch.randn(b, L, ngroups, dstate, device=DEV, dtype=torch.bfloat16)
    Cm = torch.randn_like(Bm)
    dt_raw = torch.randn(b, L, nheads, device=DEV) - 3
    A = -torch.rand(nheads, device=DEV) * 8
    dA_cumsum, dt = _chunk_cumsum_fwd(dt_raw, A, chunk, dt_bias=torch.zeros(nheads, device=DEV), dt_softplus=True)
    CB = _bmm_chunk_fwd(Cm, Bm, chunk, output_dtype=torch.float32)
    dcb, ddA = _ssd.dcb_ddA(x, dt, dA_cumsum, dout, CB)
    dcb_ref = _chunk_scan_bwd_dcb(x, dt, dA_cumsum, dout, ngroups=ngroups)
    ddA_ref = _chunk_scan_bwd_ddAcs_stable(x, dt, dA_cumsum, dout, CB)
    assert rel_err(dcb, dcb_ref) < 1e-4
    assert rel_err(ddA, ddA_ref) < 1e-4


@pytest.mark.parametrize("ngroups", [1, 2])
def test_heads_inner_launches_match_mamba_ssm_order(fused_on, monkeypatch, ngroups):
    """HEADS_INNER only exchanges the batch and head axes of two launches (chunk-state forward,
    dstates backward) through views: the same programs compute the same values, so the chunk states
    and their gradient are identical to mamba_ssm's launch order, and the whole SSD forward and
    backward agree (up to the order of atomic float32 sums in other kernels). Two groups take
    mamba_ssm's order (the exchanged view needs one group). Short last chunk, batch 3."""
    torch.manual_seed(0)
    b, L, h, p, n, cs = 3, 1000, 16, 64, 128, 256
    x = torch.randn(b, L, h, p, device=DEV, dtype=torch.bfloat16)
    B, C = (torch.randn(b, L, ngroups, n, device=DEV, dtype=torch.bfloat16) for _ in range(2))
    dt = torch.randn(b, L, h, device=DEV) - 3
    A, D, dt_bias = -torch.rand(h, device=DEV) * 4, torch.randn(h, device=DEV), torch.rand(h, device=DEV) * 0.1
    dy = torch.randn_like(x)

    def run(heads_inner):
        monkeypatch.setattr(_fused, "HEADS_INNER", heads_inner)
        y, saved = _fused._ssd_fwd(x, dt, A, B, C, D, dt_bias, cs)
        dstates = _fused._chunk_states_bwd(C, saved[0], dy, torch.float32)
        grads = torch.empty_like(x), torch.empty_like(dt), torch.empty_like(B), torch.empty_like(C)
        rest = _fused._ssd_bwd(dy, x, dt, A, B, C, D, dt_bias, cs, saved, *grads)
        return saved[2], dstates, (y, *grads, *rest)

    states, dstates, others = run(True)
    states_ref, dstates_ref, others_ref = run(False)
    assert dstates.shape == dstates_ref.shape == (b, 4, h, p, n)
    assert torch.equal(states, states_ref) and torch.equal(dstates, dstates_ref)
    for got, want in zip(others, others_ref):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("merge_every,merge", [("stack", "gate"), ("layer", "sum")])
def test_fused_path_on_packed_rows_matches_the_padded_reference(fused_on, monkeypatch, merge_every, merge, dtype):
    """seq_idx through the fused kernels (_fused.FUSED_SEQ_IDX): packed rows against the padded batch
    on the reference and on mamba_ssm's combined kernel (the path packed rows take with the flag
    off), forward and backward (input and every parameter). The cells are longer than a chunk and
    share chunks, so the states pass across chunks and reset inside them (issue 23)."""
    from cellmamba.models import plan_packing

    torch.manual_seed(0)
    cfg = BackboneConfig(arch="bimamba_mamba2", d_model=64, n_layers=2, d_state=16, headdim=32, chunk_size=64,
                         merge=merge, merge_every=merge_every, backend="cuda")
    fused = Backbone(cfg).to(DEV)
    ref = Backbone(dataclasses.replace(cfg, backend="torch")).to(DEV)
    ref.load_state_dict(fused.state_dict())
    lengths = [333, 200, 1, 97, 130, 64]
    x = torch.randn(len(lengths), 333, 64, device=DEV)
    mask = torch.arange(333, device=DEV) < torch.tensor(lengths, device=DEV)[:, None]
    packing = plan_packing(lengths, 333).to(DEV)
    assert packing.n_rows < len(lengths)

    def run_packed(model):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(xi, mask, packing=packing)
        weights = torch.linspace(-1, 1, out.hidden.numel(), device=DEV).view_as(out.hidden)
        (out.hidden.float() * weights * mask[..., None]).sum().backward()
        return out.hidden.detach(), {"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}}

    monkeypatch.setattr(_fused, "FUSED_SEQ_IDX", True)
    out_f, g_f = run_packed(fused)
    fused.zero_grad(set_to_none=True)
    monkeypatch.setattr(_fused, "FUSED_SEQ_IDX", False)
    out_c, g_c = run_packed(fused)               # mamba_ssm's combined kernel with seq_idx
    out_r, g_r = run(ref, x, mask, torch.float32)
    assert (out_f[~mask] == 0).all()
    for other in (out_c, out_r):
        assert rel_err(out_f, other) < TOL[dtype]
    for name in g_r:
        assert g_f[name] is not None, name
        assert rel_err(g_f[name], g_c[name]) < 5 * TOL[dtype], name
        assert rel_err(g_f[name], g_r[name]) < 5 * TOL[dtype], name

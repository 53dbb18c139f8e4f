"""mamba_ssm kernels against our references, and a strict state-dict round trip with mamba_ssm's modules.

Marked ``gpu``: skipped at collection without CUDA and mamba_ssm (tests/conftest.py).
Tolerances are relative to the output's largest magnitude: fp32 1e-3 (measured ~1e-4 on an H100),
bf16 autocast 5e-2 (measured ~5e-3).
"""
from __future__ import annotations

import pytest
import torch

from cellmamba.models import Backbone, BackboneConfig, Mamba1Mixer, Mamba2Mixer, kernels_available

pytestmark = pytest.mark.gpu
DEV = "cuda"
TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12)).item()


def need(kind):
    ok, reason = kernels_available(kind)
    if not ok:
        pytest.skip(reason)


def test_mamba2_state_dict_round_trip_with_mamba_ssm():
    need("mamba2")
    from mamba_ssm.modules.mamba2 import Mamba2

    torch.manual_seed(0)
    # headdim 16: mamba_ssm's unfused path needs in_proj's width (2*128 + 2*32 + nheads) to be a multiple of 8
    theirs = Mamba2(64, d_state=32, headdim=16, chunk_size=64, use_mem_eff_path=False).to(DEV)
    ours = Mamba2Mixer(64, d_state=32, headdim=16, chunk_size=64, backend="torch").to(DEV)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    back = Mamba2(64, d_state=32, headdim=16, chunk_size=64, use_mem_eff_path=False).to(DEV)
    back.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 200, 64, device=DEV)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < TOL[torch.float32]


def test_mamba1_state_dict_round_trip_with_mamba_ssm():
    need("mamba1")
    from mamba_ssm.modules.mamba_simple import Mamba

    torch.manual_seed(0)
    theirs = Mamba(64, d_state=16).to(DEV)
    ours = Mamba1Mixer(64, d_state=16, backend="torch").to(DEV)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    Mamba(64, d_state=16).to(DEV).load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 200, 64, device=DEV)
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["mamba2", "mamba1"])
def test_kernel_matches_reference_forward_and_backward(kind, dtype):
    need(kind)
    torch.manual_seed(0)
    make = (lambda b: Mamba2Mixer(64, d_state=32, headdim=32, chunk_size=64, backend=b)) if kind == "mamba2" \
        else (lambda b: Mamba1Mixer(64, d_state=16, backend=b))
    ref, ker = make("torch").to(DEV), make("cuda").to(DEV)
    ker.load_state_dict(ref.state_dict())
    x = torch.randn(2, 333, 64, device=DEV)
    outs, grads = [], []
    for m in (ref, ker):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = m(xi)
        (y.float() * torch.linspace(-1, 1, y.numel(), device=DEV).view_as(y)).sum().backward()
        outs.append(y)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    assert rel_err(outs[1], outs[0]) < TOL[dtype]
    for g_ker, g_ref in zip(grads[1], grads[0]):
        assert rel_err(g_ker, g_ref) < 5 * TOL[dtype]


@pytest.mark.parametrize("arch", ["bimamba_mamba2", "bimamba_mamba1"])
def test_padded_bimamba_on_kernels_matches_reference(arch):
    need("mamba2" if arch.endswith("2") else "mamba1")
    torch.manual_seed(0)
    cfg = BackboneConfig(arch=arch, d_model=64, n_layers=2, d_state=16, headdim=32, chunk_size=64, merge="gate")
    ref = Backbone(BackboneConfig(**{**cfg.__dict__, "backend": "torch"})).to(DEV)
    ker = Backbone(BackboneConfig(**{**cfg.__dict__, "backend": "cuda"})).to(DEV)
    ker.load_state_dict(ref.state_dict())
    x = torch.randn(2, 150, 64, device=DEV)
    mask = torch.arange(150, device=DEV) < torch.tensor([[97], [150]], device=DEV)
    with torch.no_grad():
        a, b = ref(x, mask), ker(x, mask)
    for name in ("hidden", "forward", "reverse"):
        assert rel_err(getattr(b, name), getattr(a, name)) < TOL[torch.float32]


@pytest.mark.parametrize("merge_every", ["stack", "layer"])
def test_packed_bimamba2_on_kernels_matches_the_padded_reference(merge_every):
    """Packed rows on mamba_ssm's kernels (seq_idx through conv and SSD) against the reference's
    padded batch, forward and the gradient of the input (issue 23)."""
    need("mamba2")
    from cellmamba.models import plan_packing

    torch.manual_seed(0)
    cfg = BackboneConfig(arch="bimamba_mamba2", d_model=64, n_layers=2, d_state=16, headdim=32, chunk_size=64,
                         merge="gate", merge_every=merge_every)
    ref = Backbone(BackboneConfig(**{**cfg.__dict__, "backend": "torch"})).to(DEV)
    ker = Backbone(BackboneConfig(**{**cfg.__dict__, "backend": "cuda"})).to(DEV)
    ker.load_state_dict(ref.state_dict())
    lengths = [97, 150, 33, 61, 12, 140]
    L = max(lengths)
    x = torch.randn(len(lengths), L, 64, device=DEV)
    mask = torch.arange(L, device=DEV) < torch.tensor(lengths, device=DEV)[:, None]
    packing = plan_packing(lengths, L).to(DEV)
    assert packing.n_rows < len(lengths)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ref(xa, mask), ker(xb, mask, packing=packing)
    for name in ("hidden", "forward", "reverse", "cls"):
        if getattr(a, name) is not None:
            assert rel_err(getattr(b, name), getattr(a, name)) < TOL[torch.float32], name
    w = torch.randn_like(a.hidden)
    (a.hidden * w).sum().backward()
    (b.hidden * w).sum().backward()
    assert rel_err(xb.grad, xa.grad) < TOL[torch.float32]

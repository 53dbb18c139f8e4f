"""State-dict compatibility with mamba_ssm 2.3.2 (keys and shapes written out from its source) and backends.

Expected shapes, from mamba_ssm/modules/mamba2.py (Mamba2.__init__, defaults ngroups=1,
rmsnorm=True, D_has_hdim=False, bias=False, conv_bias=True) and mamba_simple.py (Mamba.__init__,
dt_rank="auto" = ceil(d_model / 16)). tests/gpu/ loads real mamba_ssm modules strictly.
"""
from __future__ import annotations

import logging
import math

import pytest
import torch

from cellmamba.models import (
    Backbone, BackboneConfig, BackendUnavailableError, Mamba1Mixer, Mamba2Mixer, kernels_available, resolve_backend,
)

D_MODEL, D_STATE, D_CONV, EXPAND, HEADDIM = 16, 8, 4, 2, 8


def mamba2_expected(ngroups=1):
    d_inner = EXPAND * D_MODEL
    nheads = d_inner // HEADDIM
    conv_dim = d_inner + 2 * ngroups * D_STATE
    return {
        "in_proj.weight": (2 * d_inner + 2 * ngroups * D_STATE + nheads, D_MODEL),  # [z, x, B, C, dt]
        "conv1d.weight": (conv_dim, 1, D_CONV),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),  # RMSNormGated; its bias is registered as None (no key)
        "out_proj.weight": (D_MODEL, d_inner),
    }


def mamba1_expected():
    d_inner = EXPAND * D_MODEL
    dt_rank = math.ceil(D_MODEL / 16)
    return {
        "in_proj.weight": (2 * d_inner, D_MODEL),
        "conv1d.weight": (d_inner, 1, D_CONV),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * D_STATE, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, D_STATE),
        "D": (d_inner,),
        "out_proj.weight": (D_MODEL, d_inner),
    }


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_mixer_state_dict_matches_mamba_ssm(ngroups):
    m = Mamba2Mixer(D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, headdim=HEADDIM, ngroups=ngroups, backend="torch")
    assert shapes(m) == mamba2_expected(ngroups)


def test_mamba1_mixer_state_dict_matches_mamba_ssm():
    m = Mamba1Mixer(D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, backend="torch")
    assert shapes(m) == mamba1_expected()


def test_mamba_ssm_initialisation_is_reproduced():
    torch.manual_seed(0)
    m2 = Mamba2Mixer(64, d_state=16, headdim=16, backend="torch")
    A = torch.exp(m2.A_log)
    assert torch.all((A >= 1) & (A <= 16)) and torch.all(m2.D == 1) and torch.all(m2.norm.weight == 1)
    dt = torch.nn.functional.softplus(m2.dt_bias)
    assert torch.all((dt >= 1e-4 - 1e-7) & (dt <= 0.1 + 1e-6))
    m1 = Mamba1Mixer(64, d_state=16, backend="torch")
    torch.testing.assert_close(torch.exp(m1.A_log), torch.arange(1, 17.0).expand(128, 16))
    assert all(getattr(p, "_no_weight_decay", False) for p in (m2.A_log, m2.D, m2.dt_bias, m1.A_log, m1.D))


@pytest.mark.parametrize("arch", ["bimamba_mamba2", "bimamba_mamba1", "mamba2"])
def test_backbone_layers_hold_mamba_ssm_keys_under_mixer(arch):
    cfg = BackboneConfig(arch=arch, d_model=D_MODEL, n_layers=2, d_state=D_STATE, headdim=HEADDIM, backend="torch")
    sd = shapes(Backbone(cfg))
    want = mamba2_expected() if arch.endswith("2") else mamba1_expected()
    for i in range(2):
        assert {k[len(f"layers.{i}.mixer."):]: v for k, v in sd.items() if k.startswith(f"layers.{i}.mixer.")} == want


def test_state_dict_is_identical_whatever_the_backend():
    cpu_only = not kernels_available("mamba2")[0]
    a = Backbone(BackboneConfig(arch="bimamba_mamba2", d_model=16, n_layers=1, d_state=8, headdim=8, backend="torch"))
    b = Backbone(BackboneConfig(arch="bimamba_mamba2", d_model=16, n_layers=1, d_state=8, headdim=8, backend="auto"))
    assert shapes(a) == shapes(b)
    b.load_state_dict(a.state_dict(), strict=True)
    if cpu_only:  # auto runs the reference here, so outputs agree exactly
        x = torch.randn(2, 9, 16)
        torch.testing.assert_close(a(x).hidden, b(x).hidden, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("mixer", [lambda: Mamba2Mixer(16, headdim=8, backend="cuda"),
                                   lambda: Mamba1Mixer(16, backend="cuda"),
                                   lambda: Backbone(BackboneConfig(d_model=16, headdim=8, backend="cuda"))])
def test_explicit_cuda_backend_raises_on_a_cpu_machine(mixer):
    with pytest.raises(BackendUnavailableError, match="backend='cuda'.*(no CUDA device|do not import)"):
        mixer()


def test_explicit_cuda_backend_refuses_cpu_inputs(monkeypatch):
    """Even with kernels installed, an explicit "cuda" never quietly runs the reference on a CPU input."""
    import cellmamba.models._backend as backend

    monkeypatch.setattr(backend, "_kernel_status", lambda kind: (True, "pretend the kernels import"))
    with pytest.raises(BackendUnavailableError, match="input is on cpu"):
        resolve_backend("cuda", "cpu", "mamba2")


def test_auto_picks_torch_on_cpu_and_logs_once(caplog):
    import cellmamba.models._backend as backend

    backend._logged.clear()
    with caplog.at_level(logging.INFO, logger="cellmamba.models._backend"):
        assert resolve_backend("auto", "cpu", "mamba2") == "torch"
        m = Mamba2Mixer(16, d_state=8, headdim=8, backend="auto")
        m(torch.randn(1, 5, 16))
        m(torch.randn(1, 5, 16))
    msgs = [r.getMessage() for r in caplog.records if "backend='auto'" in r.getMessage()]
    assert len(msgs) == 1 and "pure-PyTorch reference" in msgs[0]


def test_unknown_backend_is_refused():
    with pytest.raises(Exception, match="backend must be one of"):
        Mamba2Mixer(16, headdim=8, backend="triton")

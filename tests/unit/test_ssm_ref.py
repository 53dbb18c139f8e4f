"""The SSM references against naive token-by-token recurrences written independently here (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cellmamba.models import Mamba1Mixer, Mamba2Mixer, selective_scan_ref, ssd_scan_ref

f64 = torch.float64


def naive_ssd(x, dt, A, B, C, D):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ; y_t = h_t C_t + D x_t, one token at a time."""
    batch, seq_len, n_heads, head_dim = x.shape
    rep = n_heads // B.shape[2]
    h = torch.zeros(batch, n_heads, head_dim, B.shape[-1], dtype=x.dtype)
    ys = []
    for t in range(seq_len):
        Bt, Ct = B[:, t].repeat_interleave(rep, 1), C[:, t].repeat_interleave(rep, 1)  # (b, h, n)
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ct) + D[:, None] * x[:, t])
    return torch.stack(ys, 1)


def naive_selective(u, delta, A, B, C, D):
    """h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t ; y_t = h_t . C_t + D u_t, one token at a time."""
    h = torch.zeros(u.shape[0], u.shape[2], A.shape[1], dtype=u.dtype)
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * u[:, t])
    return torch.stack(ys, 1)


def ssd_inputs(seq_len, n_groups=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, p, n = 2, 4, 3, 5
    x = torch.randn(b, seq_len, h, p, generator=g, dtype=f64)
    dt = F.softplus(torch.randn(b, seq_len, h, generator=g, dtype=f64))
    A = -torch.rand(h, generator=g, dtype=f64) * 4 - 0.1
    B = torch.randn(b, seq_len, n_groups, n, generator=g, dtype=f64)
    C = torch.randn(b, seq_len, n_groups, n, generator=g, dtype=f64)
    D = torch.randn(h, generator=g, dtype=f64)
    return x, dt, A, B, C, D


def selective_inputs(seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, d, n = 2, 6, 4
    u = torch.randn(b, seq_len, d, generator=g, dtype=f64)
    delta = F.softplus(torch.randn(b, seq_len, d, generator=g, dtype=f64))
    A = -torch.rand(d, n, generator=g, dtype=f64) * 4 - 0.1
    B = torch.randn(b, seq_len, n, generator=g, dtype=f64)
    C = torch.randn(b, seq_len, n, generator=g, dtype=f64)
    D = torch.randn(d, generator=g, dtype=f64)
    return u, delta, A, B, C, D


@pytest.mark.parametrize("seq_len,chunk,n_groups", [(37, 8, 1), (50, 16, 2), (5, 8, 1), (16, 16, 4), (1, 4, 1)])
def test_ssd_ref_matches_naive_recurrence(seq_len, chunk, n_groups):
    x, dt, A, B, C, D = ssd_inputs(seq_len, n_groups)
    y = ssd_scan_ref(x, dt, A, B=B, C=C, D=D, chunk_size=chunk)
    assert y.dtype == f64 and y.shape == x.shape
    torch.testing.assert_close(y, naive_ssd(x, dt, A, B, C, D), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seq_len,chunk", [(37, 8), (50, 16), (3, 8), (33, 32), (1, 4)])
def test_selective_ref_matches_naive_recurrence(seq_len, chunk):
    u, delta, A, B, C, D = selective_inputs(seq_len)
    y = selective_scan_ref(u, delta, A, B=B, C=C, D=D, chunk_size=chunk)
    assert y.dtype == f64 and y.shape == u.shape
    torch.testing.assert_close(y, naive_selective(u, delta, A, B, C, D), rtol=1e-10, atol=1e-10)


def _grads(fn, tensors):
    ts = [t.clone().requires_grad_() for t in tensors]
    y = fn(*ts)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * w).sum().backward()
    return [t.grad for t in ts]


def test_ssd_ref_gradients_match_naive():
    inputs = ssd_inputs(21, n_groups=2, seed=1)
    got = _grads(lambda x, dt, A, B, C, D: ssd_scan_ref(x, dt, A, B=B, C=C, D=D, chunk_size=8), inputs)
    want = _grads(naive_ssd, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_selective_ref_gradients_match_naive_through_checkpointed_chunks():
    inputs = selective_inputs(21, seed=1)
    got = _grads(lambda u, dl, A, B, C, D: selective_scan_ref(u, dl, A, B=B, C=C, D=D, chunk_size=8), inputs)
    want = _grads(naive_selective, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_refs_accumulate_in_float32_and_return_input_dtype():
    x, dt, A, B, C, D = (t.to(torch.bfloat16) for t in ssd_inputs(19))
    y = ssd_scan_ref(x, dt, A, B=B, C=C, D=D, chunk_size=8)
    assert y.dtype == torch.bfloat16
    want = naive_ssd(*(t.double() for t in (x, dt, A, B, C, D)))
    assert (y.double() - want).abs().max() / want.abs().max() < 2e-2


# ---- whole mixers against a naive per-token step written from mamba_ssm's step() semantics ----

def naive_mamba2_mixer(m: Mamba2Mixer, u):
    d_in, gn, H, P, N = m.d_inner, m.ngroups * m.d_state, m.nheads, m.headdim, m.d_state
    w = m.conv1d.weight[:, 0]  # (channels, width)
    conv_state = torch.zeros(u.shape[0], w.shape[0], w.shape[1], dtype=u.dtype)
    ssm = torch.zeros(u.shape[0], H, P, N, dtype=u.dtype)
    A = -torch.exp(m.A_log)
    outs = []
    for t in range(u.shape[1]):
        z, xBC, dt = torch.split(m.in_proj(u[:, t]), [d_in, d_in + 2 * gn, H], dim=-1)
        conv_state = torch.cat([conv_state[..., 1:], xBC[..., None]], dim=-1)
        xBC = F.silu((conv_state * w).sum(-1) + m.conv1d.bias)
        x, B, C = torch.split(xBC, [d_in, gn, gn], dim=-1)
        dt = F.softplus(dt + m.dt_bias)
        x = x.view(-1, H, P)
        B = B.view(-1, m.ngroups, N).repeat_interleave(H // m.ngroups, 1)
        C = C.view(-1, m.ngroups, N).repeat_interleave(H // m.ngroups, 1)
        ssm = ssm * torch.exp(dt * A)[..., None, None] + (dt[..., None] * x)[..., None] * B[:, :, None]
        y = (torch.einsum("bhpn,bhn->bhp", ssm, C) + m.D[:, None] * x).reshape(-1, d_in)
        g = (y * F.silu(z)).view(-1, m.ngroups, d_in // m.ngroups)
        g = g / torch.sqrt(g.square().mean(-1, keepdim=True) + m.norm.eps)
        outs.append(m.out_proj(g.reshape(-1, d_in) * m.norm.weight))
    return torch.stack(outs, 1)


def naive_mamba1_mixer(m: Mamba1Mixer, u):
    w = m.conv1d.weight[:, 0]
    conv_state = torch.zeros(u.shape[0], m.d_inner, w.shape[1], dtype=u.dtype)
    h = torch.zeros(u.shape[0], m.d_inner, m.d_state, dtype=u.dtype)
    A = -torch.exp(m.A_log)
    outs = []
    for t in range(u.shape[1]):
        x, z = m.in_proj(u[:, t]).chunk(2, dim=-1)
        conv_state = torch.cat([conv_state[..., 1:], x[..., None]], dim=-1)
        x = F.silu((conv_state * w).sum(-1) + m.conv1d.bias)
        dt, B, C = torch.split(m.x_proj(x), [m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(F.linear(dt, m.dt_proj.weight) + m.dt_proj.bias)
        h = torch.exp(dt[..., None] * A) * h + (dt * x)[..., None] * B[:, None]
        y = (h * C[:, None]).sum(-1) + m.D * x
        outs.append(m.out_proj(y * F.silu(z)))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba2_mixer_matches_naive_step(ngroups):
    torch.manual_seed(0)
    m = Mamba2Mixer(16, d_state=8, headdim=8, ngroups=ngroups, chunk_size=8, backend="torch").double()
    u = torch.randn(2, 27, 16, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(m(u), naive_mamba2_mixer(m, u), rtol=1e-10, atol=1e-10)


def test_mamba1_mixer_matches_naive_step():
    torch.manual_seed(0)
    m = Mamba1Mixer(16, d_state=8, chunk_size=8, backend="torch").double()
    u = torch.randn(2, 27, 16, dtype=f64)
    with torch.no_grad():
        torch.testing.assert_close(m(u), naive_mamba1_mixer(m, u), rtol=1e-10, atol=1e-10)

"""Pure-PyTorch references of the two SSM scans: the specification the GPU kernels are tested against.

Both run anywhere (CPU, CI; no Triton, no CUDA), accumulate in float32 (float64 inputs stay
float64), return the input dtype, and are vectorised within a chunk of tokens: the only
Python loop is over chunks. Layout is ours, (batch, seq_len, ...), not mamba_ssm's
(batch, channels, seq_len) of the Mamba1 kernel.

Recurrences (h_0 = 0, per head or channel; A < 0):

- Mamba2 / SSD, scalar decay per head:
  ``h_t = exp(dt_t A) h_t-1 + dt_t x_t B_t^T``,  ``y_t = h_t C_t + D x_t``
- Mamba1 / selective scan, diagonal decay per channel and state:
  ``h_t = exp(delta_t A) * h_t-1 + delta_t u_t B_t``,  ``y_t = h_t . C_t + D u_t``
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["ssd_scan_ref", "selective_scan_ref"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def ssd_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, *, B: torch.Tensor,
                 C: torch.Tensor, D: torch.Tensor | None = None, chunk_size: int = 64,
                 seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Mamba2's SSD scan by the chunked algorithm (intra-chunk quadratic form + inter-chunk states).

    Parameters
    ----------
    x : (batch, seq_len, n_heads, head_dim)
    dt : (batch, seq_len, n_heads)
        Step sizes, already positive (softplus and bias applied by the caller).
    A : (n_heads,)
        Negative decay rates.
    B, C : (batch, seq_len, n_groups, d_state)
        Head ``h`` uses group ``h // (n_heads // n_groups)`` (mamba_ssm's convention).
    D : (n_heads,), optional
        Skip connection.
    chunk_size
        Tokens per chunk; ``seq_len`` need not be a multiple of it.
    seq_idx : (batch, seq_len) int, optional
        Packed rows (:mod:`~cellmamba.models.packing`): non-decreasing sequence ids; the state
        resets where the id changes, as mamba_ssm's ``seq_idx`` (no state crosses a boundary).

    Returns
    -------
    y : (batch, seq_len, n_heads, head_dim), dtype of ``x``.
    """
    batch, seq_len, n_heads, head_dim = x.shape
    n_groups = B.shape[2]
    if n_heads % n_groups:
        raise ValueError(f"n_heads={n_heads} is not a multiple of n_groups={n_groups}")
    cd = _compute_dtype(x)
    q = chunk_size
    n_chunks = -(-seq_len // q)
    pad = n_chunks * q - seq_len
    # Zero padding at the end is inert: dt = 0 means no decay and no input.
    xs, dts, Bs, Cs = (F.pad(t.to(cd), (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    xs = xs.view(batch, n_chunks, q, n_heads, head_dim)
    dts = dts.view(batch, n_chunks, q, n_heads)
    rep = n_heads // n_groups
    Bs = Bs.view(batch, n_chunks, q, n_groups, -1).repeat_interleave(rep, dim=3)  # (b, c, q, h, n)
    Cs = Cs.view(batch, n_chunks, q, n_groups, -1).repeat_interleave(rep, dim=3)

    log_decay = dts * A.to(cd)  # (b, c, q, h), <= 0
    cum = torch.cumsum(log_decay, dim=2)  # decay from the chunk start up to and including token i
    xdt = xs * dts.unsqueeze(-1)  # (b, c, q, h, p)

    # seq_idx: ``same[b, c, i, j]`` = tokens i and j of chunk c are of one sequence; a chunk's
    # state belongs to the sequence of its last token, and reaches the next chunk's tokens of that
    # sequence only (the chunk padding repeats the last id: it is inert either way)
    if seq_idx is not None:
        sid = seq_idx.to(device=x.device, dtype=torch.int64)
        sid = torch.cat([sid, sid[:, -1:].expand(-1, pad)], dim=1).view(batch, n_chunks, q)
        last = sid[:, :, -1]  # (b, c)
        prev_last = F.pad(last[:, :-1], (1, 0), value=-1)  # the sequence the entering state belongs to
        same = sid.unsqueeze(3) == sid.unsqueeze(2)  # (b, c, i, j)

    # 1. within a chunk: y_i = sum_{j <= i} (C_i . B_j) exp(cum_i - cum_j) dt_j x_j
    seg = cum.unsqueeze(3) - cum.unsqueeze(2)  # (b, c, i, j, h)
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    keep = causal[:, :, None] if seq_idx is None else (causal & same).unsqueeze(-1)
    seg = seg.masked_fill(~keep, float("-inf"))
    scores = torch.einsum("bcihn,bcjhn->bcijh", Cs, Bs) * torch.exp(seg)
    y = torch.einsum("bcijh,bcjhp->bcihp", scores, xdt)

    # 2. state each chunk adds at its end: sum_j exp(cum_last - cum_j) dt_j x_j B_j^T
    to_end = torch.exp(cum[:, :, -1:] - cum)  # (b, c, q, h)
    if seq_idx is not None:
        to_end = to_end * (sid == last.unsqueeze(-1)).unsqueeze(-1)
    chunk_states = torch.einsum("bcjhn,bcjh,bcjhp->bchpn", Bs, to_end, xdt)

    # 3. pass states across chunks (a loop over chunks, not tokens): entering[c] = state before chunk c
    chunk_decay = torch.exp(cum[:, :, -1])  # (b, c, h)
    if seq_idx is not None:  # the state goes on only where chunk c ends in the sequence it entered with
        chunk_decay = chunk_decay * (last == prev_last).unsqueeze(-1)
    state = torch.zeros_like(chunk_states[:, 0])
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        state = state * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n)

    # 4. contribution of the entering state: C_i exp(cum_i) h_in (to the entering sequence's tokens)
    enter_w = torch.exp(cum)
    if seq_idx is not None:
        enter_w = enter_w * (sid == prev_last.unsqueeze(-1)).unsqueeze(-1)
    y = y + torch.einsum("bcihn,bchpn,bcih->bcihp", Cs, entering, enter_w)
    y = y.reshape(batch, n_chunks * q, n_heads, head_dim)[:, :seq_len]
    if D is not None:
        y = y + x.to(cd) * D.to(cd)[:, None]
    return y.to(x.dtype)


def _selective_chunk(u, delta, A, B, C, h0):
    """One chunk of the selective scan: inclusive associative (Hillis-Steele) scan over its tokens.

    u, delta: (b, q, d); B, C: (b, q, n); A: (d, n); h0: (b, d, n).
    Returns y (b, q, d) without the D term, and the state after the chunk (b, d, n).
    """
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, q, d, n): the "a" of h_t = a_t h_t-1 + b_t
    inp = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, q, d, n): the "b"
    q = u.shape[1]
    step = 1
    while step < q:
        # combine token t with token t - step: (a, b) o (a', b') = (a a', a b' + b)
        prev_inp = F.pad(inp[:, :-step], (0, 0, 0, 0, step, 0))
        prev_decay = F.pad(decay[:, :-step], (0, 0, 0, 0, step, 0), value=1.0)
        inp = inp + decay * prev_inp
        decay = decay * prev_decay
        step *= 2
    h = inp + decay * h0.unsqueeze(1)  # (b, q, d, n)
    y = torch.einsum("bqdn,bqn->bqd", h, C)
    return y, h[:, -1]


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, *, B: torch.Tensor,
                       C: torch.Tensor, D: torch.Tensor | None = None, chunk_size: int = 64) -> torch.Tensor:
    """Mamba1's selective scan, chunk by chunk, each chunk by a parallel associative scan.

    Only one chunk's states, (batch, chunk_size, d_inner, d_state), exist at a time; under
    autograd each chunk is recomputed in the backward pass (activation checkpointing) so the
    whole batch x seq_len x d_inner x d_state state is never stored either.

    Parameters
    ----------
    u : (batch, seq_len, d_inner)
    delta : (batch, seq_len, d_inner)
        Step sizes, already positive (softplus and bias applied by the caller).
    A : (d_inner, d_state)
        Negative decay rates.
    B, C : (batch, seq_len, d_state)
    D : (d_inner,), optional
    chunk_size
        Tokens per chunk; ``seq_len`` need not be a multiple of it.

    Returns
    -------
    y : (batch, seq_len, d_inner), dtype of ``u``.
    """
    cd = _compute_dtype(u)
    batch, seq_len, d_inner = u.shape
    uc, dc, Bc, Cc, Ac = (t.to(cd) for t in (u, delta, B, C, A))
    h = uc.new_zeros(batch, d_inner, A.shape[1])
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (uc, dc, Bc, Cc, Ac))
    ys = []
    for start in range(0, seq_len, chunk_size):
        sl = slice(start, start + chunk_size)
        args = (uc[:, sl], dc[:, sl], Ac, Bc[:, sl], Cc[:, sl], h)
        y, h = checkpoint(_selective_chunk, *args, use_reentrant=False) if use_ckpt else _selective_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=1)
    if D is not None:
        y = y + uc * D.to(cd)
    return y.to(u.dtype)

"""One Triton kernel for two steps of the SSD backward pass: the gradient of CB = C B^T (per
chunk and group) and the "stable" gradient of the cumulative decay dA_cumsum that flows through
the intra-chunk term. Used by the fused CUDA path (:mod:`._fused`) in place of mamba_ssm's
``_chunk_scan_bwd_dcb`` + ``_chunk_scan_bwd_ddAcs_stable``.

Why written here: both mamba_ssm kernels compute the same per-head product P_h = dout_h x_h^T
(chunk x chunk, scaled by dt and the decay) and reduce it two ways; the second re-reads the
float32 CB tile for every head and runs a prefix sum along every row. Here one program takes one
(row block, column block) tile of the lower triangle of a chunk, loads its CB tile once, and for
each head of the group computes P_h once, accumulating dCB and writing the row and column sums
of Q_h = P_h * CB (strictly lower part). The formulas are mamba_ssm's (float32 accumulation, the
same masks and the same ``exp(min(dA_m - dA_n, 0))``):

    P_h[m, n]   = (dout_h[m] . x_h[n]) * dt_h[n] * exp(min(dA_h[m] - dA_h[n], 0))
    dCB[m, n]   = sum_h P_h[m, n]                              for m >= n, else 0
    ddA_h[k]    = sum_{m >= k} sum_{n < k} Q_h[m, n],   Q_h = P_h * CB on m > n  (ddA_h[0] = 0)

ddA without a prefix sum per row: ddA_h[k] - ddA_h[k + 1] = rowsum_k(Q_h) - colsum_k(Q_h)
(the region {m >= k > n} loses column k and gains row k), so ddA_h is the suffix sum of
rowsum - colsum over the chunk (ddA_h[chunk] = 0), a (b, h, c, chunk) vector that a second,
small kernel sums together with the SSD backward's other dA_cumsum terms
(:func:`_ddA_suffix_kernel`: one launch in place of 15 per layer, 3 of them fills; 0.03 ms per
layer at 131,072 token-directions on an H100). Every term of Q is bounded (the decay factor is
<= 1), as in mamba_ssm's "stable" form.

Tested against these formulas in float64 (tests/unit/test_triton_kernels.py, interpreter on CPU)
and against mamba_ssm's two kernels on CUDA (tests/gpu/test_fused.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

#: tile (rows x columns of a chunk) and warps, picked on an H100 (benchmarks/results/gpu_kernels.csv);
#: any powers of 2 up to the chunk size compute the same result
DCB_BLOCK = {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4}


@triton.jit
def _dcb_ddA_kernel(x_ptr, dout_ptr, dt_ptr, dA_ptr, cb_ptr, dcb_ptr, rows_ptr, cols_ptr,
                    seqlen, headdim, nchunks, heads_per_group,
                    s_x_b, s_x_l, s_x_h, s_x_p,
                    s_do_b, s_do_l, s_do_h, s_do_p,
                    s_dt_b, s_dt_h, s_dt_c, s_dt_k,
                    s_dA_b, s_dA_h, s_dA_c, s_dA_k,
                    s_cb_b, s_cb_c, s_cb_g, s_cb_m, s_cb_n,
                    s_dcb_b, s_dcb_c, s_dcb_g, s_dcb_m, s_dcb_n,
                    s_r_b, s_r_h, s_r_c, s_r_part, s_r_k,
                    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_mn, pid_bc, pid_g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_tiles_n: tl.constexpr = CHUNK // BLOCK_N
    pid_m = pid_mn // n_tiles_n
    pid_n = pid_mn - pid_m * n_tiles_n
    pid_b = pid_bc // nchunks
    pid_c = pid_bc - pid_b * nchunks
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dcb_ptrs = (dcb_ptr + pid_b.to(tl.int64) * s_dcb_b + pid_c * s_dcb_c + pid_g * s_dcb_g
                + offs_m[:, None] * s_dcb_m + offs_n[None, :] * s_dcb_n)
    if pid_n * BLOCK_N >= (pid_m + 1) * BLOCK_M:  # above the diagonal: dCB is zero, Q has no terms
        tl.store(dcb_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
        return
    limit = min(CHUNK, seqlen - pid_c * CHUNK)  # the last chunk may be short
    offs_p = tl.arange(0, BLOCK_P)
    lower = offs_m[:, None] >= offs_n[None, :]
    strict = offs_m[:, None] > offs_n[None, :]
    cb = tl.load(cb_ptr + pid_b.to(tl.int64) * s_cb_b + pid_c * s_cb_c + pid_g * s_cb_g
                 + offs_m[:, None] * s_cb_m + offs_n[None, :] * s_cb_n).to(tl.float32)
    cb = tl.where(strict, cb, 0.0)
    dcb = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row0 = pid_c * CHUNK
    for i in range(heads_per_group):
        h = pid_g * heads_per_group + i
        do = tl.load(dout_ptr + pid_b.to(tl.int64) * s_do_b + h * s_do_h + (row0 + offs_m)[:, None] * s_do_l
                     + offs_p[None, :] * s_do_p, mask=(offs_m[:, None] < limit) & (offs_p[None, :] < headdim), other=0.0)
        xt = tl.load(x_ptr + pid_b.to(tl.int64) * s_x_b + h * s_x_h + (row0 + offs_n)[None, :] * s_x_l
                     + offs_p[:, None] * s_x_p, mask=(offs_n[None, :] < limit) & (offs_p[:, None] < headdim), other=0.0)
        p = tl.dot(do, xt)
        dt_n = tl.load(dt_ptr + pid_b * s_dt_b + h * s_dt_h + pid_c * s_dt_c + offs_n * s_dt_k).to(tl.float32)
        dA_n = tl.load(dA_ptr + pid_b * s_dA_b + h * s_dA_h + pid_c * s_dA_c + offs_n * s_dA_k).to(tl.float32)
        dA_m = tl.load(dA_ptr + pid_b * s_dA_b + h * s_dA_h + pid_c * s_dA_c + offs_m * s_dA_k).to(tl.float32)
        p = p * dt_n[None, :] * tl.exp(tl.minimum(dA_m[:, None] - dA_n[None, :], 0.0))
        dcb += p
        q = p * cb  # cb is zero on and above the diagonal
        base = pid_b.to(tl.int64) * s_r_b + h * s_r_h + pid_c * s_r_c
        tl.store(rows_ptr + base + pid_n * s_r_part + offs_m * s_r_k, tl.sum(q, axis=1))
        tl.store(cols_ptr + base + pid_m * s_r_part + offs_n * s_r_k, tl.sum(q, axis=0))
    tl.store(dcb_ptrs, tl.where(lower, dcb, 0.0))


def supported(chunk_size: int, headdim: int) -> bool:
    """Shapes the kernel is written for: a power-of-2 chunk of 16..256 rows and a head dimension
    of at most 256."""
    return 16 <= chunk_size <= 256 and chunk_size & (chunk_size - 1) == 0 and headdim <= 256


def dcb_ddA(x: torch.Tensor, dt: torch.Tensor, dA_cumsum: torch.Tensor, dout: torch.Tensor,
            CB: torch.Tensor, add: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dCB, ddA) as defined in the module docstring.

    x, dout: (b, l, h, p); dt (softplus'd), dA_cumsum: (b, h, c, chunk), float32; CB: (b, c, g,
    chunk, chunk) float32. Returns dCB (b, c, g, chunk, chunk) and ddA (b, h, c, chunk), float32.

    ``add = (ddA_next, ddA_prev, ddA_chunk)`` ((b, h, c, chunk), (b, h, c, chunk), (b, h, c)) adds
    the SSD backward's other terms of the dA_cumsum gradient in the same kernel: the returned ddA is
    then ``ddA + ddA_next + suffix_sum(ddA_prev)[k] + ddA_chunk`` (mamba_ssm adds ddA_chunk to
    ddA_prev's last entry, then suffix-sums: the same, every entry gets it).
    """
    b, seqlen, nheads, headdim = x.shape
    _, _, nchunks, chunk = dt.shape
    ngroups = CB.shape[2]
    if not supported(chunk, headdim):
        raise ValueError(f"dcb_ddA: chunk_size {chunk} / headdim {headdim} not supported (see supported())")
    if dout.shape != x.shape or dA_cumsum.shape != dt.shape or CB.shape != (b, nchunks, ngroups, chunk, chunk) \
            or nheads % ngroups or dt.shape != (b, nheads, nchunks, chunk):
        raise ValueError(f"dcb_ddA: inconsistent shapes x {tuple(x.shape)} dout {tuple(dout.shape)} "
                         f"dt {tuple(dt.shape)} dA_cumsum {tuple(dA_cumsum.shape)} CB {tuple(CB.shape)}")
    bm, bn = min(DCB_BLOCK["BLOCK_M"], chunk), min(DCB_BLOCK["BLOCK_N"], chunk)
    dcb = torch.empty(b, nchunks, ngroups, chunk, chunk, dtype=torch.float32, device=x.device)
    # row sums per column tile, column sums per row tile; slots of tiles above the diagonal are
    # never written (the suffix kernel masks them), so no zero-fill
    parts = max(chunk // bm, chunk // bn)
    rows = torch.empty(b, nheads, nchunks, parts, chunk, dtype=torch.float32, device=x.device)
    cols = torch.empty(rows.shape, dtype=torch.float32, device=x.device)
    grid = ((chunk // bm) * (chunk // bn), b * nchunks, ngroups)
    _dcb_ddA_kernel[grid](
        x, dout, dt, dA_cumsum, CB, dcb, rows, cols,
        seqlen, headdim, nchunks, nheads // ngroups,
        *x.stride(), *dout.stride(), *dt.stride(), *dA_cumsum.stride(), *CB.stride(), *dcb.stride(),
        *rows.stride(),
        CHUNK=chunk, BLOCK_M=bm, BLOCK_N=bn, BLOCK_P=max(16, triton.next_power_of_2(headdim)),
        num_warps=DCB_BLOCK["num_warps"])
    ddA = torch.empty(b, nheads, nchunks, chunk, dtype=torch.float32, device=x.device)
    if add is not None:
        nxt, prev, per_chunk = add
        if nxt.shape != ddA.shape or prev.shape != ddA.shape or per_chunk.shape != ddA.shape[:3]:
            raise ValueError(f"dcb_ddA: add terms of shapes {[tuple(t.shape) for t in add]}, expected "
                             f"{tuple(ddA.shape)} twice and {tuple(ddA.shape[:3])}")
        nxt, prev, per_chunk = nxt.contiguous(), prev.contiguous(), per_chunk.contiguous()
    else:
        nxt = prev = per_chunk = ddA  # not read
    _ddA_suffix_kernel[(b * nheads * nchunks,)](
        rows, cols, ddA, nxt, prev, per_chunk, rows.stride(2), rows.stride(3),
        CHUNK=chunk, BLOCK_M=bm, BLOCK_N=bn, ADD=add is not None, num_warps=4)
    return dcb, ddA


@triton.jit
def _ddA_suffix_kernel(rows_ptr, cols_ptr, ddA_ptr, next_ptr, prev_ptr, chunk_ptr, s_r_bhc, s_r_part,
                       CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ADD: tl.constexpr):
    """ddA[k] = sum_{j >= k} (rowsum_j - colsum_j) for one (batch, head, chunk), ddA[0] = 0;
    with ADD, plus next[k] + sum_{j >= k} prev[j] + chunk (see :func:`dcb_ddA`).

    rows / cols: (b, h, c, parts, chunk), contiguous; ``rows[.., t, m]`` is the row
    sum of column tile t (written where that tile of row m is on or below the diagonal),
    ``cols[.., t, n]`` the column sum of row tile t (written where that tile of column n is)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    base = pid * s_r_bhc
    d = tl.zeros((CHUNK,), dtype=tl.float32)
    for t in range(CHUNK // BLOCK_N):  # column tile t of row m: below or on the diagonal
        keep = t * BLOCK_N < (offs // BLOCK_M + 1) * BLOCK_M
        d += tl.load(rows_ptr + base + t * s_r_part + offs, mask=keep, other=0.0)
    for t in range(CHUNK // BLOCK_M):  # row tile t of column n
        keep = (offs // BLOCK_N) * BLOCK_N < (t + 1) * BLOCK_M
        d -= tl.load(cols_ptr + base + t * s_r_part + offs, mask=keep, other=0.0)
    ddA = tl.where(offs == 0, 0.0, tl.cumsum(d, 0, reverse=True))
    if ADD:
        ddA += tl.load(next_ptr + pid * CHUNK + offs) + tl.load(chunk_ptr + pid)
        ddA += tl.cumsum(tl.load(prev_ptr + pid * CHUNK + offs), 0, reverse=True)
    tl.store(ddA_ptr + pid * CHUNK + offs, ddA)

"""Fused CUDA path of the Mamba2 stacks: mamba_ssm's Triton / CUDA kernels, composed our way.

Why this module exists (measured on one H100, bf16, d512 x 6, BiMamba2 at 65,536 tokens per
step; ``benchmarks/results/gpu_profile_*.txt``): with mamba_ssm 2.3.2's own composition
(``mamba_split_conv1d_scan_combined`` + ``rms_norm_fn`` + a separate residual add) a training
step spent

- 15% in its two layer-norm backward kernels: both launch one program per SM, and each program
  walks ``M / n_SM`` rows one after the other (~1,000 rows at M = 131,072), so the kernel waits
  on memory latency instead of streaming at bandwidth;
- 4% recomputing the causal convolution in the backward pass (the forward output is dropped);
- 4% on separate residual adds (forward and backward) around every block.

What is done here instead, changing no arithmetic: the same mamba_ssm kernels, launched with
:data:`PROGRAMS_PER_SM` times as many programs (fewer rows each); the convolution output
(channel-last, which also spares copies of B and C), the gated norm's output and the SSD's
float32 chunk states and CB kept for the backward pass instead of recomputed; and mamba_ssm's
fused residual-add + RMSNorm in the block (as its own ``Block`` does). Keeping costs memory
(about 35% more activations at d512 x 6, d_state 128): ``BackboneConfig.recompute=True``
recomputes them as mamba_ssm does, for the longest contexts. mamba_ssm offers no switch for any
of this.

One step runs on our own Triton kernels, tested against the kernels they replace and against an
independent formula: the SSD backward's dCB and intra-chunk ddA (:mod:`._ssd`: one kernel in place
of mamba_ssm's two, which each computed the same per-head product; the same formulas, ddA's
float32 sums in another order; 0.96 instead of 1.59 ms per layer at 131,072 token-directions),
and a small one that sums every term of the dA_cumsum gradient (one launch in place of 15).
:data:`TRITON_DCB` switches them off for comparisons. Two of mamba_ssm's SSD kernels are launched
with the batch and head axes exchanged (:data:`HEADS_INNER`: same programs, B / C shared in L2).

It uses private mamba_ssm functions, so it is tied to the versions in :data:`TESTED_MAMBA`;
with any other version (or without the compiled ``causal_conv1d``) :func:`available` says no and
the models use mamba_ssm's public path, which computes the same function. ``CELLMAMBA_FUSED=0``
turns it off (benchmarks compare both). Correctness: tests/gpu/test_fused.py (against the
pure-PyTorch reference and against mamba_ssm's own path, forward and backward, fp32 and bf16).
"""
from __future__ import annotations

import functools
import logging
import math
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["TESTED_MAMBA", "PROGRAMS_PER_SM", "available", "add_rms_norm", "mamba2_mixer"]

#: mamba_ssm versions whose private kernel signatures this module was tested against. 2.3.1 (what
#: envs/gpu.yaml pins): the source of every function used here equals 2.3.2.post1's but for a cast of
#: C to dout's dtype in _chunk_scan_bwd_dstates_kernel, a no-op here (both are zxbcdt's dtype); on
#: an H200 (2026-12-01) the paper-size rehearsal trained on this path with 2.3.1 and
#: tests/gpu/test_fused.py ran partly (the norm kernels and one backbone case passed before its time
#: limit: benchmarks/results/gpu_tests_2026-12-01_mamba231_partial.log)
TESTED_MAMBA = ("2.3.1", "2.3.2", "2.3.2.post1")
#: backward layer-norm programs per SM (mamba_ssm launches 1): enough rows in flight to stream
PROGRAMS_PER_SM = 8


@functools.lru_cache(maxsize=None)
def _mamba_ok() -> bool:
    try:
        import mamba_ssm
        from causal_conv1d.cpp_functions import _causal_conv1d_fwd_cpp, causal_conv1d_bwd_function  # noqa: F401
        from mamba_ssm.ops.triton import layer_norm, layernorm_gated, ssd_combined  # noqa: F401
    except Exception:
        return False
    ok = mamba_ssm.__version__ in TESTED_MAMBA
    if not ok:
        log.info("cellmamba: fused Mamba2 path off (mamba_ssm %s is not one of %s); using mamba_ssm's own path",
                 mamba_ssm.__version__, TESTED_MAMBA)
    return ok


def available(t: torch.Tensor) -> bool:
    """Whether the fused path can run on ``t`` (CUDA, a tested mamba_ssm, compiled causal_conv1d)."""
    if not t.is_cuda or os.environ.get("CELLMAMBA_FUSED", "1") == "0":
        return False
    from ._backend import has_compiled_causal_conv1d
    return has_compiled_causal_conv1d() and _mamba_ok()


def _grid_rows(x: torch.Tensor, M: int) -> tuple[int, int]:
    """(programs, rows per program) for a row-looping backward kernel over M rows."""
    sm = torch.cuda.get_device_properties(x.device).multi_processor_count
    programs = max(1, min(M, sm * PROGRAMS_PER_SM))
    return programs, math.ceil(M / programs)


def _rms_norm_bwd(dy, x, weight, rstd, eps, dresidual, x_dtype, has_residual):
    """Backward of mamba_ssm's (residual-add +) RMSNorm: its ``layer_norm._layer_norm_bwd_kernel``
    on a wider grid. x is the norm's input (the residual stream); returns (dx in x_dtype, dw,
    dresidual_in in x's dtype, or None where there is no residual or it equals dx)."""
    import triton
    from mamba_ssm.ops.triton.layer_norm import _layer_norm_bwd_kernel

    M, N = x.shape
    dx = torch.empty(M, N, dtype=x_dtype, device=x.device)
    dres_in = torch.empty_like(x) if has_residual and dx.dtype != x.dtype else None
    programs, rows = _grid_rows(x, M)
    dw_part = torch.empty(programs, N, dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(N)
    _layer_norm_bwd_kernel[(programs,)](
        x, weight, None, None, dy, dx, dw_part, None, dresidual, None, None, None, None, None, dres_in, None, None,
        None, rstd,
        x.stride(0), 0, dy.stride(0), dx.stride(0), dresidual.stride(0) if dresidual is not None else 0, 0, 0,
        dres_in.stride(0) if dres_in is not None else 0,
        M, N, eps, 0.0, rows,
        True, block_n, dresidual is not None, dres_in is not None, False, False,
    )
    return dx, dw_part.sum(0).to(weight.dtype), dres_in


def _gated_rms_norm_bwd(dy, x, z, weight, rstd, eps, group_size, dz, out=None):
    """Backward of ``RMSNorm(x * silu(z))`` (mamba_ssm's ``layernorm_gated._layer_norm_bwd_kernel``,
    norm_before_gate=False) on a wider grid; writes dz into ``dz`` and, where ``out`` is given,
    recomputes the output into it (for the out_proj weight gradient). Returns (dx, dw)."""
    import triton
    from mamba_ssm.ops.triton.layernorm_gated import _layer_norm_bwd_kernel

    M, N = x.shape
    ngroups = N // group_size
    dx = torch.empty_like(x)
    block_n = triton.next_power_of_2(group_size)
    num_warps = min(max(block_n // 256, 1), 8)  # mamba_ssm's heuristic
    programs, rows = _grid_rows(x, M)
    dw_part = torch.empty(programs, N, dtype=torch.float32, device=x.device)
    _layer_norm_bwd_kernel[(programs, ngroups)](
        x, weight, None, z, out, dy, dx, dw_part, None, dz, None, rstd,
        x.stride(0), z.stride(0), out.stride(0) if out is not None else 0, dy.stride(0), dx.stride(0), dz.stride(0),
        dw_part.stride(0), 0,
        M, group_size, eps, rows,
        NORM_BEFORE_GATE=False, IS_RMS_NORM=True, BLOCK_N=block_n, num_warps=num_warps,
    )
    return dx, dw_part.sum(0).to(weight.dtype)


class _AddRMSNorm(torch.autograd.Function):
    """``residual_out = x + residual`` (in float32) and ``y = RMSNorm(residual_out)``, one kernel
    each way (mamba_ssm's ``layer_norm._layer_norm_fwd``; backward: :func:`_rms_norm_bwd`)."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps):
        from mamba_ssm.ops.triton.layer_norm import _layer_norm_fwd

        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        r2 = residual.reshape(-1, shape[-1]).contiguous() if residual is not None else None
        y, _, _, rstd, residual_out, *_ = _layer_norm_fwd(
            x2, weight.contiguous(), None, eps, r2, residual_dtype=torch.float32, is_rms_norm=True)
        if residual_out is None:  # x already float32 and no residual: the norm's input is x
            residual_out = x2
        ctx.save_for_backward(residual_out, weight, rstd)
        ctx.eps, ctx.x_dtype, ctx.has_residual = eps, x.dtype, residual is not None
        return y.view(shape), residual_out.view(shape)

    @staticmethod
    def backward(ctx, dy, dresidual_out):
        residual_out, weight, rstd = ctx.saved_tensors
        shape = dy.shape
        dy = dy.reshape(-1, shape[-1]).contiguous()
        dres = dresidual_out.reshape(-1, shape[-1]).contiguous() if dresidual_out is not None else None
        dx, dw, dres_in = _rms_norm_bwd(dy, residual_out, weight, rstd, ctx.eps, dres, ctx.x_dtype, ctx.has_residual)
        dresidual = (dres_in if dres_in is not None else dx).view(shape) if ctx.has_residual else None
        return dx.view(shape), dresidual, dw, None


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """Fused pre-norm step: ``(RMSNorm(x + residual), x + residual)``, the sum in float32.

    x: (..., d) the previous block's update (or the stack's input when residual is None);
    residual: (..., d) float32 or None. The normed output has x's dtype.
    """
    return _AddRMSNorm.apply(x, residual, weight, eps)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t with a unit last stride (the SSD kernels need no more; a strided view stays a view)."""
    return t if t.stride(-1) == 1 else t.contiguous()


#: launch mamba_ssm's chunk-state forward and its dstates backward with the batch and head axes
#: exchanged (views, one group): their grid runs the heads outermost, so each head re-reads the
#: group-shared B (C) of every chunk from HBM; exchanged, a chunk's heads are neighbouring programs
#: and read it from L2. Same kernels, same per-program arithmetic (False: mamba_ssm's launch order)
HEADS_INNER = True


def _heads_inner(ngroups: int) -> bool:
    return HEADS_INNER and ngroups == 1


def _group_as_batch(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, 1, n) B or C as the (nheads, l, b, n) view the exchanged launch reads: the kernels' batch
    axis (our heads) with stride 0, their group axis (one per "head", ratio 1) our batch."""
    return t.permute(2, 1, 0, 3).expand(nheads, -1, -1, -1)


def _chunk_states(B, x, dt, dA_cumsum, seq_idx=None):
    """mamba_ssm's ``_chunk_state_fwd`` (float32 states, (b, c, h, p, n)), heads innermost where
    :func:`_heads_inner` (not with ``seq_idx``: the exchanged launch would index it by head)."""
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_state_fwd

    batch, _, nheads, headdim = x.shape
    if seq_idx is not None or not _heads_inner(B.shape[2]):
        return _chunk_state_fwd(B, x, dt, dA_cumsum, seq_idx=seq_idx, states_in_fp32=True)
    states = torch.empty(batch, dt.shape[2], nheads, headdim, B.shape[-1], dtype=torch.float32, device=x.device)
    _chunk_state_fwd(_group_as_batch(B, nheads), x.transpose(0, 2), dt.transpose(0, 1), dA_cumsum.transpose(0, 1),
                     states=states.transpose(0, 2))
    return states


def _chunk_states_bwd(C, dA_cumsum, dy, dtype, seq_idx=None):
    """mamba_ssm's ``_chunk_scan_bwd_dstates`` ((b, c, h, p, n) gradient of the passed states),
    heads innermost where :func:`_heads_inner` (the result is then a (b, c, h, p, n) view of an
    (h, c, b, p, n) tensor: the kernels after it take strides)."""
    from mamba_ssm.ops.triton.ssd_chunk_scan import _chunk_scan_bwd_dstates

    if seq_idx is not None or not _heads_inner(C.shape[2]):
        return _chunk_scan_bwd_dstates(C, dA_cumsum, dy, seq_idx=seq_idx, dtype=dtype)
    nheads = dy.shape[2]
    return _chunk_scan_bwd_dstates(_group_as_batch(C, nheads), dA_cumsum.transpose(0, 1), dy.transpose(0, 2),
                                   dtype=dtype).transpose(0, 2)


def _ssd_fwd(x, dt, A, B, C, D, dt_bias, chunk_size, seq_idx=None):
    """mamba_ssm's ``_mamba_chunk_scan_combined_fwd`` (no z, no initial states) that also returns
    what its backward would recompute: (y, (dA_cumsum, softplus dt, float32 chunk states, CB)).
    x: (b, l, h, p); dt: (b, l, h) before softplus and bias; B, C: (b, l, g, n)."""
    from mamba_ssm.ops.triton.ssd_chunk_scan import _chunk_scan_fwd

    dA_cumsum, dt_sp, states, CB = saved = _ssd_prepare(x, dt, A, B, C, dt_bias, chunk_size, seq_idx)
    y, _ = _chunk_scan_fwd(CB, x, dt_sp, dA_cumsum, _unit_stride(C), states, D=D, z=None, seq_idx=seq_idx)
    return y, saved


def _ssd_prepare(x, dt, A, B, C, dt_bias, chunk_size, seq_idx=None):
    """The SSD's (dA_cumsum, softplus dt, float32 passed chunk states, CB): what its forward
    computes before the output and its backward needs (mamba_ssm's calls, in its order)."""
    from mamba_ssm.ops.triton.ssd_bmm import _bmm_chunk_fwd
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_fwd
    from mamba_ssm.ops.triton.ssd_state_passing import _state_passing_fwd

    B, C = _unit_stride(B), _unit_stride(C)  # no-ops for the channel-last conv output
    dA_cumsum, dt_sp = _chunk_cumsum_fwd(dt, A, chunk_size, dt_bias=dt_bias, dt_softplus=True)
    states = _chunk_states(B, x, dt_sp, dA_cumsum, seq_idx)
    # float32 passed states, as mamba_ssm's backward recomputes them (its forward's are in C's dtype)
    states, _ = _state_passing_fwd(states.flatten(-2), dA_cumsum[:, :, :, -1], seq_idx=seq_idx, chunk_size=chunk_size,
                                   out_dtype=torch.float32)
    states = states.unflatten(-1, (x.shape[-1], B.shape[-1]))
    CB = _bmm_chunk_fwd(C, B, chunk_size, seq_idx=seq_idx, output_dtype=torch.float32)
    return dA_cumsum, dt_sp, states, CB


#: the SSD backward's dCB and intra-chunk ddA in one Triton kernel (cellmamba.models._ssd) where
#: the shapes allow; False: mamba_ssm's two kernels (benchmarks compare both)
TRITON_DCB = True


def _triton_dcb(chunk_size: int, headdim: int) -> bool:
    if not TRITON_DCB:
        return False
    from ._ssd import supported
    return supported(chunk_size, headdim)


def _ssd_bwd(dy, x, dt, A, B, C, D, dt_bias, chunk_size, saved, dx, ddt, dB, dC, seq_idx=None):
    """mamba_ssm's ``_mamba_chunk_scan_combined_bwd`` (no z, no initial states) on
    :func:`_ssd_prepare`'s (dA_cumsum, dt, states, CB), kept from the forward or recomputed. Writes
    dx, ddt (w.r.t. the raw dt), dB, dC into the given views; returns (dA, dD, ddt_bias)."""
    from mamba_ssm.ops.triton.ssd_bmm import _bmm_chunk_bwd
    from mamba_ssm.ops.triton.ssd_chunk_scan import _chunk_scan_bwd_dC, _chunk_scan_bwd_dcb, _chunk_scan_bwd_ddAcs_stable
    from mamba_ssm.ops.triton.ssd_chunk_state import _chunk_cumsum_bwd, _chunk_state_bwd_db
    from mamba_ssm.ops.triton.ssd_combined import _chunk_scan_chunk_state_bwd_dx
    from mamba_ssm.ops.triton.ssd_state_passing import _state_passing_bwd

    dA_cumsum, dt_sp, states, CB = saved
    headdim, dstate, ngroups = x.shape[-1], B.shape[-1], B.shape[-2]
    B, C, dy = _unit_stride(B), _unit_stride(C), _unit_stride(dy)
    dstates = _chunk_states_bwd(C, dA_cumsum, dy, states.dtype, seq_idx)
    dstates, ddA_chunk_cumsum, _, states = _state_passing_bwd(
        states.flatten(-2), dA_cumsum[:, :, :, -1], dstates.flatten(-2), seq_idx=seq_idx, has_initial_states=False,
        dstates_dtype=x.dtype, states_dtype=x.dtype, chunk_size=chunk_size)
    states, dstates = states.unflatten(-1, (headdim, dstate)), dstates.unflatten(-1, (headdim, dstate))
    dx, ddt_sp, dD = _chunk_scan_chunk_state_bwd_dx(x, dt_sp, dA_cumsum, B, CB, dy, dstates, D=D, seq_idx=seq_idx,
                                                    dx=dx)
    dB_states, ddA_next = _chunk_state_bwd_db(x, dt_sp, dA_cumsum, dstates, seq_idx=seq_idx, B=B, ngroups=ngroups)
    dC_states, ddA_cumsum_prev = _chunk_scan_bwd_dC(states.to(x.dtype), dA_cumsum, dy, seq_idx=seq_idx, C=C,
                                                    ngroups=ngroups)
    # our dCB kernel does not mask across sequences: with seq_idx, mamba_ssm's (which zeroes dCB
    # between sequences; its ddA kernel needs no seq_idx, CB being zero there already)
    if seq_idx is None and _triton_dcb(chunk_size, headdim):  # one kernel for both, and the sum of ddA's terms
        from ._ssd import dcb_ddA
        dCB, ddA = dcb_ddA(x, dt_sp, dA_cumsum, dy, CB, add=(ddA_next, ddA_cumsum_prev, ddA_chunk_cumsum))
    else:
        dCB = _chunk_scan_bwd_dcb(x, dt_sp, dA_cumsum, dy, seq_idx=seq_idx, ngroups=ngroups).to(CB.dtype)
        ddA = _chunk_scan_bwd_ddAcs_stable(x, dt_sp, dA_cumsum, dy, CB)
        ddA_cumsum_prev[..., -1] += ddA_chunk_cumsum
        ddA += ddA_next + ddA_cumsum_prev.flip([-1]).cumsum(dim=-1).flip([-1])
    _bmm_chunk_bwd(C, dCB, residual=dB_states, out=dB)
    _bmm_chunk_bwd(B, dCB.transpose(-1, -2), residual=dC_states, out=dC)
    _, dA, ddt_bias = _chunk_cumsum_bwd(ddA, ddt_sp, dt, A, dt_bias=dt_bias, dt_softplus=True, ddt=ddt)
    return dA, dD, ddt_bias


class _Mamba2Fn(torch.autograd.Function):
    """conv -> SSD -> gated RMSNorm -> out_proj of one Mamba2 layer (mamba_ssm's
    ``MambaSplitConv1dScanCombinedFn`` without the options we do not use) that keeps the conv
    output (channel-last) and the SSD's chunk states instead of recomputing them (``keep``; off:
    recomputed as mamba_ssm does, for less memory), and runs the gated-norm backward on
    :func:`_gated_rms_norm_bwd`."""

    @staticmethod
    def forward(ctx, zxbcdt, conv_w, conv_b, dt_bias, A, D, norm_w, out_w, chunk_size, headdim, ngroups, eps, keep,
                seq_idx=None):
        from mamba_ssm.ops.triton.layernorm_gated import _layer_norm_fwd

        batch, seqlen, M, nheads, dim, gn, (z, xBC, dt) = _layout(zxbcdt, conv_w, D, headdim)
        xBC_conv = _conv_silu(xBC, conv_w, conv_b, seq_idx)
        x, B, C = _heads(xBC_conv, nheads, headdim, ngroups, dim, gn)
        y_ssm, ssd_saved = _ssd_fwd(x, dt, A, B, C, D, dt_bias, chunk_size, seq_idx)
        y_ssm = y_ssm.reshape(M, dim)
        y, _, rstd = _layer_norm_fwd(y_ssm, norm_w.contiguous(), None, eps, z.reshape(M, dim),
                                     group_size=dim // ngroups, norm_before_gate=False, is_rms_norm=True)
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            y, out_w = y.to(dtype), out_w.to(dtype)
        out = F.linear(y, out_w).view(batch, seqlen, -1)
        # kept: the conv output, the norm output (out_proj's input) and the SSD's chunk states / CB
        kept = (xBC_conv, y, *ssd_saved) if keep else ()
        ctx.save_for_backward(zxbcdt, y_ssm, conv_w, conv_b, dt_bias, A, D, norm_w, rstd, out_w, *kept)
        ctx.chunk_size, ctx.headdim, ctx.ngroups, ctx.eps, ctx.seq_idx = chunk_size, headdim, ngroups, eps, seq_idx
        return out

    @staticmethod
    def backward(ctx, dout):
        zxbcdt, y_ssm, conv_w, conv_b, dt_bias, A, D, norm_w, rstd, out_w, *kept = ctx.saved_tensors
        headdim, ngroups = ctx.headdim, ctx.ngroups
        batch, seqlen, M, nheads, dim, gn, (z, xBC, dt) = _layout(zxbcdt, conv_w, D, headdim)
        seq_idx = ctx.seq_idx
        xBC_conv = kept[0] if kept else _conv_silu(xBC, conv_w, conv_b, seq_idx)
        x, B, C = _heads(xBC_conv, nheads, headdim, ngroups, dim, gn)
        ssd_saved = kept[2:] if kept else _ssd_prepare(x, dt, A, B, C, dt_bias, ctx.chunk_size, seq_idx)
        dzxbcdt = torch.empty_like(zxbcdt)
        dz, dxBC_given, ddt_given = dzxbcdt.split([dim, dim + 2 * gn, nheads], dim=-1)
        dxBC = torch.empty(xBC_conv.shape, dtype=xBC_conv.dtype, device=xBC_conv.device)  # channel-last
        dx, dB, dC = _heads(dxBC, nheads, headdim, ngroups, dim, gn)
        dout = dout.reshape(M, -1)
        dy = dout @ out_w  # (M, dim); out_w: (d_model, dim)
        y = kept[1] if kept else torch.empty(M, dim, dtype=y_ssm.dtype, device=y_ssm.device)
        dy_ssm, dnorm_w = _gated_rms_norm_bwd(dy, y_ssm, z.reshape(M, dim), norm_w, rstd, ctx.eps, dim // ngroups,
                                              dz.reshape(M, dim), None if kept else y)
        dA, dD, ddt_bias = _ssd_bwd(dy_ssm.view(batch, seqlen, nheads, headdim), x, dt, A, B, C, D, dt_bias,
                                    ctx.chunk_size, ssd_saved, dx=dx, ddt=ddt_given, dB=dB, dC=dC, seq_idx=seq_idx)
        dout_w = dout.t().mm(y.to(dout.dtype))  # (d_model, dim)
        dconv_w, dconv_b = _conv_silu_bwd(xBC, conv_w, conv_b, dxBC, dxBC_given, seq_idx)
        return dzxbcdt, dconv_w, dconv_b, ddt_bias, dA, dD, dnorm_w, dout_w, None, None, None, None, None, None


def _heads(xBC_conv, nheads, headdim, ngroups, dim, gn):
    """x, B, C of the conv output as the SSD kernels take them: (b, l, h, p), (b, l, g, n), (b, l, g, n) views."""
    x, B, C = xBC_conv.split([dim, gn, gn], dim=-1)
    return x.unflatten(-1, (nheads, headdim)), B.unflatten(-1, (ngroups, -1)), C.unflatten(-1, (ngroups, -1))


def _layout(zxbcdt, conv_w, D, headdim):
    """Sizes of one Mamba2 layer's projection and its (z, xBC, dt) views:
    (batch, seqlen, batch * seqlen, nheads, d_inner, ngroups * d_state, (z, xBC, dt))."""
    batch, seqlen, _ = zxbcdt.shape
    nheads = D.shape[0]
    dim = nheads * headdim
    gn = (conv_w.shape[0] - dim) // 2
    return batch, seqlen, batch * seqlen, nheads, dim, gn, zxbcdt.split([dim, dim + 2 * gn, nheads], dim=-1)


def _conv_silu(xBC: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor,
               seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """causal_conv1d + SiLU of (b, l, c) into a channel-last (b, l, c) tensor. causal_conv1d's own
    wrapper allocates a channel-first output for a strided input, which then costs copies of B,
    C and of the gradient."""
    from causal_conv1d.cpp_functions import _causal_conv1d_fwd_cpp
    from mamba_ssm.ops.triton.ssd_combined import ensure_stride

    out = torch.empty(xBC.shape, dtype=xBC.dtype, device=xBC.device)
    _causal_conv1d_fwd_cpp(x=ensure_stride(xBC).transpose(1, 2), weight=conv_w, bias=conv_b, seq_idx=seq_idx,
                           initial_states=None, out=out.transpose(1, 2), final_states_out=None, silu_activation=True)
    return out


def _conv_silu_bwd(xBC, conv_w, conv_b, dout, dx, seq_idx=None):
    """Backward of :func:`_conv_silu` (causal_conv1d's kernel) for dout (channel-last), writing dx
    into ``dx`` (the input projection gradient's xBC slice); returns (dconv_w, dconv_b)."""
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function
    from mamba_ssm.ops.triton.ssd_combined import ensure_stride

    dx_out, dconv_w, dconv_b, *_ = causal_conv1d_bwd_function(
        ensure_stride(xBC).transpose(1, 2), conv_w, conv_b, dout.transpose(1, 2), seq_idx, None, None,
        ensure_stride(dx).transpose(1, 2), False, True)
    dx_out = dx_out.transpose(1, 2)
    if dx_out.data_ptr() != dx.data_ptr() or dx_out.stride() != dx.stride():
        dx.copy_(dx_out)
    return dconv_w, dconv_b


#: packed rows (``seq_idx``) on the fused path (the kernels take mamba_ssm's seq_idx; our dCB kernel is
#: skipped for them). On since tests/gpu/test_fused.py's packed test passed on an H200 (2026-12-03), where
#: it ran packed rows 10-13% faster than mamba_ssm's combined kernel
#: (benchmarks/results/packing_NVIDIA_H200_2026-12-03.csv). ``CELLMAMBA_FUSED_SEQ_IDX=0`` sends packed
#: rows to the combined kernel (the A/B of that benchmark).
FUSED_SEQ_IDX = os.environ.get("CELLMAMBA_FUSED_SEQ_IDX", "1") != "0"


def mamba2_mixer(mixer, zxbcdt: torch.Tensor, A: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The fused Mamba2 layer body for a :class:`~cellmamba.models.ssm.Mamba2Mixer` (after in_proj);
    ``mixer.recompute`` trades the kept activations for recomputation; ``seq_idx`` (int32, (b, l)):
    packed rows (:data:`FUSED_SEQ_IDX`)."""
    return _Mamba2Fn.apply(zxbcdt, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, mixer.dt_bias, A, mixer.D,
                           mixer.norm.weight, mixer.out_proj.weight, mixer.chunk_size, mixer.headdim, mixer.ngroups,
                           mixer.norm.eps, not mixer.recompute, seq_idx)

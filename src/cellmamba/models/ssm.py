"""Mamba2 and Mamba1 mixers, state-dict compatible with mamba_ssm's ``Mamba2`` and ``Mamba``.

Parameter names, shapes and initialisation follow mamba_ssm 2.3.2 with its defaults
(Mamba2: ngroups configurable, ``rmsnorm=True``, ``norm_before_gate=False``, D per head,
no ``d_ssm`` split, no biases on the projections; Mamba1: ``dt_rank="auto"``), so a mamba_ssm
state_dict loads strictly into these modules and back. Only the forward pass differs by
backend: mamba_ssm's kernels on CUDA (see :mod:`._backend`), the references of :mod:`._ref`
elsewhere.

Mixers see one direction of one padded batch: x: (batch, seq_len, d_model). They are causal
(causal depthwise conv, then a causal scan), so with right padding no padded position can
influence a real one; the blocks in :mod:`.bimamba` also zero the padded inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from . import _fused
from ._backend import check_backend, has_compiled_causal_conv1d, resolve_backend
from ._ref import selective_scan_ref, ssd_scan_ref

__all__ = ["Mamba2Mixer", "Mamba1Mixer", "GatedRMSNorm"]


def _inverse_softplus_dt(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """Biases b such that softplus(b) is log-uniform in [dt_min, dt_max] (mamba_ssm's dt init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _causal_conv(conv: nn.Conv1d, x: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal conv + SiLU. x: (batch, seq_len, channels) -> same shape.

    ``seq_idx`` (batch, seq_len): packed rows; a token reads only earlier tokens of its own
    sequence (causal_conv1d's ``seq_idx``): the conv as a sum of shifted, masked copies."""
    seq_len = x.shape[1]
    if seq_idx is None:
        return F.silu(conv(x.transpose(1, 2))[..., :seq_len].transpose(1, 2))
    k = conv.weight.shape[-1]
    w = conv.weight[:, 0, :]  # (channels, k): w[:, k - 1] weighs the token itself
    y = x * w[:, k - 1] if conv.bias is None else x * w[:, k - 1] + conv.bias
    for shift in range(1, k):
        same = (seq_idx[:, shift:] == seq_idx[:, :-shift]).unsqueeze(-1).to(x.dtype)  # (batch, seq_len - shift, 1)
        y = y + F.pad(x[:, :-shift] * same, (0, 0, shift, 0)) * w[:, k - 1 - shift]
    return F.silu(y)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(x * silu(z))`` per group of channels (mamba_ssm's RMSNormGated, norm_before_gate=False).

    x, z: (..., dim) -> (..., dim); statistics in float32.
    """

    def __init__(self, dim: int, *, group_size: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.group_size = group_size or dim
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = _f32(x) * F.silu(_f32(z))
        g = h.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * _f32(self.weight)).to(dtype)


class Mamba2Mixer(nn.Module):
    """Mamba2 (SSD) mixer; parameters as mamba_ssm.modules.mamba2.Mamba2.

    Parameters
    ----------
    d_model
        Width of the residual stream.
    d_state, d_conv, expand, headdim, ngroups, chunk_size
        As in mamba_ssm (defaults are mamba_ssm's).
    backend
        "auto" | "torch" | "cuda" (see :mod:`cellmamba.models._backend`).
    recompute
        On the fused CUDA path (:mod:`._fused`): recompute the conv output, the gated norm's
        output and the SSD chunk states in the backward pass instead of keeping them (less
        memory, slower). No effect elsewhere.

    State dict: ``in_proj.weight`` (2*d_inner + 2*ngroups*d_state + nheads, d_model),
    ``conv1d.weight`` (d_inner + 2*ngroups*d_state, 1, d_conv), ``conv1d.bias``, ``dt_bias``
    (nheads,), ``A_log`` (nheads,), ``D`` (nheads,), ``norm.weight`` (d_inner,),
    ``out_proj.weight`` (d_model, d_inner).
    """

    kind = "mamba2"

    def __init__(self, d_model: int, *, d_state: int = 128, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 256, backend: str = "auto",
                 recompute: bool = False):
        super().__init__()
        check_backend(backend, self.kind)
        self.recompute = bool(recompute)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model = {self.d_inner} is not a multiple of headdim={headdim}")
        self.headdim, self.ngroups, self.chunk_size, self.backend = headdim, ngroups, chunk_size, backend
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"nheads={self.nheads} is not a multiple of ngroups={ngroups}")
        conv_dim = self.d_inner + 2 * ngroups * d_state
        # in_proj output order: [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(_inverse_softplus_dt(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """u: (batch, seq_len, d_model) -> (batch, seq_len, d_model); ``seq_idx`` (batch, seq_len)
        int32: packed rows (:mod:`~cellmamba.models.packing`), no state crosses a change of id."""
        zxbcdt = self.in_proj(u)
        A = -torch.exp(_f32(self.A_log))
        if resolve_backend(self.backend, u.device, self.kind) == "cuda":
            return _in_int32_pieces(self._forward_cuda, zxbcdt, A, seq_idx=seq_idx)
        batch, seq_len, _ = u.shape
        gn = self.ngroups * self.d_state
        z, xBC, dt = zxbcdt.split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        x, B, C = _causal_conv(self.conv1d, xBC, seq_idx).split([self.d_inner, gn, gn], dim=-1)
        dt = F.softplus(_f32(dt) + _f32(self.dt_bias))
        y = ssd_scan_ref(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, A,
            B=B.unflatten(-1, (self.ngroups, self.d_state)), C=C.unflatten(-1, (self.ngroups, self.d_state)),
            D=self.D, chunk_size=self.chunk_size, seq_idx=seq_idx,
        )
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _forward_cuda(self, zxbcdt: torch.Tensor, A: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined

        if seq_idx is not None:
            seq_idx = seq_idx.to(torch.int32).contiguous()
        # packed rows take the fused path unless it is switched off for them (_fused.FUSED_SEQ_IDX);
        # otherwise mamba_ssm's combined kernel, which reads seq_idx
        if (seq_idx is None or _fused.FUSED_SEQ_IDX) and _fused.available(zxbcdt):  # mamba_ssm's kernels, our way
            return _fused.mamba2_mixer(self, zxbcdt, A, seq_idx)
        if has_compiled_causal_conv1d():  # fused conv + scan + gated norm + out_proj
            return mamba_split_conv1d_scan_combined(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A, self.D,
                self.chunk_size, seq_idx=seq_idx, activation="silu", rmsnorm_weight=self.norm.weight,
                rmsnorm_eps=self.norm.eps, outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias,
                headdim=self.headdim, ngroups=self.ngroups, norm_before_gate=False,
            )
        gn = self.ngroups * self.d_state
        z, xBC, dt = zxbcdt.split([self.d_inner, self.d_inner + 2 * gn, self.nheads], dim=-1)
        x, B, C = _causal_conv(self.conv1d, xBC, seq_idx).split([self.d_inner, gn, gn], dim=-1)
        y = mamba_chunk_scan_combined(
            x.unflatten(-1, (self.nheads, self.headdim)), dt, A,
            B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True, seq_idx=seq_idx,
        )
        return self.out_proj(self.norm(y.flatten(-2), z))


_INT32_LIMIT = 2**31 - 1


def _in_int32_pieces(fn, t: torch.Tensor, *args, width: int | None = None,
                     seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``fn(t, *args)`` on batch pieces small enough for mamba_ssm's kernels.

    mamba_ssm's kernels index with 32-bit offsets: a (batch, seq_len, width) input of more than
    2**31 elements reads out of bounds ("illegal memory access", seen on an H100 with
    bidirectional batch 16 x 60,530 tokens x 2,320 channels). Rows are independent, so the
    batch is cut into pieces under the limit and the outputs concatenated (autograd-safe).
    """
    per_row = t.shape[1] * (width or t.shape[2])
    rows = max(1, _INT32_LIMIT // per_row)
    extra = {} if seq_idx is None else {"seq_idx": seq_idx}
    if t.shape[0] <= rows:
        return fn(t, *args, **extra)
    if seq_idx is None:
        return torch.cat([fn(piece, *args) for piece in t.split(rows)], dim=0)
    return torch.cat([fn(piece, *args, seq_idx=s) for piece, s in zip(t.split(rows), seq_idx.split(rows))], dim=0)


class Mamba1Mixer(nn.Module):
    """Mamba1 (selective scan) mixer; parameters as mamba_ssm.modules.mamba_simple.Mamba.

    Parameters
    ----------
    d_model
        Width of the residual stream.
    d_state, d_conv, expand
        As in mamba_ssm (defaults are mamba_ssm's); ``dt_rank = ceil(d_model / 16)``.
    chunk_size
        Tokens per chunk of the reference scan (no effect on the CUDA kernel).
    backend
        "auto" | "torch" | "cuda".

    State dict: ``in_proj.weight`` (2*d_inner, d_model), ``conv1d.weight`` (d_inner, 1, d_conv),
    ``conv1d.bias``, ``x_proj.weight`` (dt_rank + 2*d_state, d_inner), ``dt_proj.weight``
    (d_inner, dt_rank), ``dt_proj.bias``, ``A_log`` (d_inner, d_state), ``D`` (d_inner,),
    ``out_proj.weight`` (d_model, d_inner).
    """

    kind = "mamba1"

    def __init__(self, d_model: int, *, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 chunk_size: int = 64, backend: str = "auto"):
        super().__init__()
        check_backend(backend, self.kind)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.chunk_size, self.backend = chunk_size, backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(_inverse_softplus_dt(self.d_inner))
        self.dt_proj.bias._no_reinit = True
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        for p in (self.A_log, self.D):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        """u: (batch, seq_len, d_model) -> (batch, seq_len, d_model). Packed rows (``seq_idx``) are
        refused: mamba_ssm's Mamba1 kernels take no sequence index."""
        if seq_idx is not None:
            raise InputError("Mamba1 layers cannot run packed rows (mamba_ssm's selective scan has no sequence "
                             "index); use a Mamba2 backbone or pack: false")
        A = -torch.exp(_f32(self.A_log))
        if resolve_backend(self.backend, u.device, self.kind) == "cuda":
            # the projection is 2 * expand wide: split on its size, not on u's
            return _in_int32_pieces(self._forward_cuda, u, A, width=2 * self.d_inner)
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = _causal_conv(self.conv1d, x)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(_f32(F.linear(dt, self.dt_proj.weight)) + _f32(self.dt_proj.bias))
        y = selective_scan_ref(x, delta, A, B=B, C=C, D=self.D, chunk_size=self.chunk_size)
        return self.out_proj(y * F.silu(z))

    def _forward_cuda(self, u: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

        xz = self.in_proj(u).transpose(1, 2)  # (batch, 2*d_inner, seq_len)
        if has_compiled_causal_conv1d():  # fused conv + scan + out_proj
            return mamba_inner_fn(
                xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., : u.shape[1]])  # (batch, d_inner, seq_len)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        y = selective_scan_fn(
            x, dt.contiguous(), A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
            self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))

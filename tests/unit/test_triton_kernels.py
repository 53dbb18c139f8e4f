"""Our Triton kernel (cellmamba.models._ssd) against an independent PyTorch computation.

On a machine without CUDA it runs in Triton's interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py; numpy on the CPU: the same kernel code, block by block), so the kernel's
indexing, masking and partial sums are checked in CI; tests/gpu runs the compiled kernel against
the mamba_ssm kernels it replaces. Skipped, visibly, where Triton is not installed (it ships with
CUDA builds of PyTorch; the test extra installs it on Linux x86-64).
"""
from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton not installed (the test extra installs it on Linux x86-64)")

DEV = "cuda" if torch.cuda.is_available() else "cpu"


class _NanEmptyTorch:
    """torch, except that ``empty`` returns NaN-filled tensors."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*size, **kwargs):
        return torch.full(size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size, float("nan"),
                          **kwargs)


@pytest.fixture(params=[(8, 16), (16, 8), None], ids=["tiles8x16", "tiles16x8", "default_tiles"])
def ssd_kernels(request, monkeypatch):
    """The kernel module; small tiles make a 32-row chunk span several row and column tiles, with
    tiles above the diagonal (the default tiles are clipped to the chunk)."""
    if DEV == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off (tests/conftest.py sets TRITON_INTERPRET=1)")
    import cellmamba.models._ssd as ssd
    monkeypatch.setattr(ssd, "torch", _NanEmptyTorch())  # an output slot the kernel misses shows as NaN
    if request.param is not None:
        monkeypatch.setattr(ssd, "DCB_BLOCK", {"BLOCK_M": request.param[0], "BLOCK_N": request.param[1], "num_warps": 4})
    return ssd


def dcb_ddA_ref(x, dt, dA, dout, CB):
    """The two SSD-backward quantities from their definitions (cellmamba.models._ssd), float64 loops
    over chunks and heads."""
    b, seqlen, nheads, _ = x.shape
    _, _, nchunks, chunk = dt.shape
    ngroups = CB.shape[2]
    hpg = nheads // ngroups
    dcb = torch.zeros(b, nchunks, ngroups, chunk, chunk, dtype=torch.float64)
    ddA = torch.zeros(b, nheads, nchunks, chunk, dtype=torch.float64)
    m = torch.arange(chunk)
    lower, strict = m[:, None] >= m[None, :], m[:, None] > m[None, :]
    for c in range(nchunks):
        rows = slice(c * chunk, min((c + 1) * chunk, seqlen))
        n_real = rows.stop - rows.start
        for h in range(nheads):
            g = h // hpg
            for bi in range(b):
                do = torch.zeros(chunk, x.shape[-1], dtype=torch.float64)
                xx = torch.zeros_like(do)
                do[:n_real], xx[:n_real] = dout[bi, rows, h].double(), x[bi, rows, h].double()
                a = dA[bi, h, c].double()
                p = (do @ xx.T) * dt[bi, h, c].double()[None, :] * torch.exp(torch.clamp(a[:, None] - a[None, :], max=0))
                dcb[bi, c, g] += torch.where(lower, p, 0)
                q = torch.where(strict, p * CB[bi, c, g].double(), 0)
                for k in range(1, chunk):
                    ddA[bi, h, c, k] = q[k:, :k].sum()
    return dcb, ddA


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dcb_ddA_matches_definition(ssd_kernels, dtype):
    if DEV == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter multiplies bfloat16 tl.dot operands wrongly (numpy has no bfloat16); "
                    "this case runs on CUDA")
    torch.manual_seed(2)
    b, seqlen, nheads, headdim, ngroups, chunk = 2, 77, 4, 16, 2, 32  # 3 chunks, the last one short
    nchunks = -(-seqlen // chunk)
    x = torch.randn(b, seqlen, nheads, headdim, device=DEV).to(dtype)
    dout = torch.randn(b, seqlen, nheads, headdim, device=DEV).to(dtype)
    dt = torch.rand(b, nheads, nchunks, chunk, device=DEV) * 0.5
    dt.view(b, nheads, -1)[..., seqlen:] = 0  # as mamba_ssm's chunk cumsum leaves the padding
    dA_cumsum = torch.cumsum(-dt * torch.rand(nheads, device=DEV)[None, :, None, None] * 2, dim=-1)
    CB = torch.randn(b, nchunks, ngroups, chunk, chunk, device=DEV)
    dcb, ddA = ssd_kernels.dcb_ddA(x, dt, dA_cumsum, dout, CB)
    dcb_ref, ddA_ref = dcb_ddA_ref(x.cpu(), dt.cpu(), dA_cumsum.cpu(), dout.cpu(), CB.cpu())
    tol = 2e-3 if DEV == "cuda" else 1e-5  # tf32 products on a GPU
    torch.testing.assert_close(dcb.double().cpu(), dcb_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ddA.double().cpu(), ddA_ref, rtol=tol, atol=tol * 10)
    assert (ddA[..., 0] == 0).all()
    # the other terms of the dA_cumsum gradient, added in the same kernel: mamba_ssm's expression
    nxt, prev = torch.randn_like(dA_cumsum), torch.randn_like(dA_cumsum)
    per_chunk = torch.randn(b, nheads, nchunks, device=DEV)
    _, ddA_all = ssd_kernels.dcb_ddA(x, dt, dA_cumsum, dout, CB, add=(nxt, prev, per_chunk))
    prev64 = prev.double().cpu().clone()
    prev64[..., -1] += per_chunk.double().cpu()
    want = ddA_ref + nxt.double().cpu() + prev64.flip([-1]).cumsum(-1).flip([-1])
    torch.testing.assert_close(ddA_all.double().cpu(), want, rtol=tol, atol=tol * 10)
    with pytest.raises(ValueError, match="add terms"):
        ssd_kernels.dcb_ddA(x, dt, dA_cumsum, dout, CB, add=(nxt, prev, per_chunk[..., :1]))


def test_dcb_ddA_rejects_unsupported(ssd_kernels):
    x = torch.zeros(1, 10, 2, 8, device=DEV)
    dt = torch.zeros(1, 2, 1, 24, device=DEV)
    with pytest.raises(ValueError, match="chunk_size 24"):
        ssd_kernels.dcb_ddA(x, dt, dt, x, torch.zeros(1, 1, 1, 24, 24, device=DEV))

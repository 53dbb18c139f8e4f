"""Choosing between mamba_ssm's GPU kernels and the pure-PyTorch references.

``backend="torch"`` always runs the references of :mod:`cellmamba.models._ref`.
``backend="cuda"`` runs mamba_ssm's kernels and raises :class:`BackendUnavailableError` when
that cannot be honoured (no CUDA device, mamba_ssm or its compiled extension missing, or an
input that is not on a CUDA device): never a silent fallback.
``backend="auto"`` uses the kernels for CUDA inputs when they import, the references otherwise,
and logs its choice once per process and kernel family.

mamba_ssm is imported lazily, only when a CUDA input reaches a layer. ``import mamba_ssm``
imports its compiled ``selective_scan_cuda`` unconditionally, so even the Mamba2 (Triton)
kernels need a complete mamba-ssm install; we do not stub the extension out.
"""
from __future__ import annotations

import functools
import logging

import torch

from ..errors import CellmambaError

__all__ = ["BACKENDS", "BackendUnavailableError", "kernels_available", "resolve_backend"]

logger = logging.getLogger(__name__)

#: the accepted values of ``backend``
BACKENDS = ("auto", "torch", "cuda")
_KINDS = ("mamba2", "mamba1")
_logged: set[tuple[str, str]] = set()


class BackendUnavailableError(CellmambaError, RuntimeError):
    """An explicit ``backend="cuda"`` cannot run here (the message says why)."""


@functools.lru_cache(maxsize=None)
def _kernel_status(kind: str) -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device is available"
    try:
        if kind == "mamba2":
            import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
        else:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401
            import selective_scan_cuda
            if not hasattr(selective_scan_cuda, "fwd"):  # an empty stand-in lets Mamba2 import; Mamba1 needs the real one
                return False, ("selective_scan_cuda has no compiled kernels (a stand-in module?); Mamba1 needs mamba-ssm "
                               "built with its CUDA extension")
    except Exception as exc:  # ImportError, or a broken compiled extension
        return False, f"mamba_ssm kernels do not import ({type(exc).__name__}: {exc}); install mamba-ssm (pip install 'cellmamba[cuda]')"
    return True, "mamba_ssm kernels import"


@functools.lru_cache(maxsize=None)
def has_compiled_causal_conv1d() -> bool:
    """True when causal_conv1d's compiled extension imports (mamba_ssm's fused paths need it)."""
    try:
        import causal_conv1d_cuda  # noqa: F401
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
    except Exception:
        return False
    return True


def kernels_available(kind: str = "mamba2") -> tuple[bool, str]:
    """Whether mamba_ssm's kernels of ``kind`` ("mamba2" or "mamba1") can run, and why (not).

    Returns
    -------
    (available, reason)
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return _kernel_status(kind)


def check_backend(backend: str, kind: str) -> None:
    """Validate ``backend`` when a layer is built; an explicit "cuda" that cannot run raises."""
    if backend not in BACKENDS:
        raise CellmambaError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cuda":
        ok, reason = kernels_available(kind)
        if not ok:
            raise BackendUnavailableError(
                f"backend='cuda' was requested for {kind} layers but {reason}; "
                "use backend='torch' (reference) or 'auto' (kernels where possible)"
            )


def resolve_backend(backend: str, device: torch.device | str, kind: str = "mamba2") -> str:
    """The backend that runs a ``kind`` layer on an input living on ``device``: "torch" or "cuda".

    Parameters
    ----------
    backend
        "auto", "torch" or "cuda".
    device
        Device of the layer's input.
    kind
        "mamba2" (SSD Triton kernels) or "mamba1" (selective-scan CUDA kernels).
    """
    check_backend(backend, kind)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"backend='cuda' was requested for {kind} layers but the input is on {device}; "
                "move the model to a CUDA device or use backend='auto'/'torch'"
            )
        return "cuda"
    ok, reason = kernels_available(kind) if device.type == "cuda" else (False, f"the input is on {device}")
    choice = "cuda" if ok else "torch"
    if (kind, choice) not in _logged:
        _logged.add((kind, choice))
        what = "mamba_ssm kernels" if ok else "the pure-PyTorch reference"
        logger.info("backend='auto': %s layers run %s (%s)", kind, what, reason)
    return choice

"""Numeric precision of training and inference: the choice per device (:func:`resolve_precision`)
and the context that applies it (:func:`autocast`)."""
from __future__ import annotations

import contextlib

import torch

from ..errors import InputError
from .config import PRECISIONS  # torch-free, where the config checks read it

__all__ = ["PRECISIONS", "resolve_precision", "autocast"]



def resolve_precision(precision: str, device: torch.device | str) -> str:
    """"bf16" or "fp32" for ``device``: "auto" is bf16 on CUDA, fp32 elsewhere; an explicit "bf16"
    off CUDA raises InputError (CPU bf16 autocast is slow and changes results; it is not offered)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise InputError(f"precision 'bf16' needs a CUDA device (got {device}); use 'auto' or 'fp32'")
    return precision


def autocast(device: torch.device, precision: str):
    """The context running a forward pass at ``precision`` (a :func:`resolve_precision` result):
    bf16 autocast on ``device`` for "bf16", nothing for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

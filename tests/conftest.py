"""Shared fixtures. Tests needing ../shared/data skip visibly when it is absent (a user's clone)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELLMAMBA_SHARED_DATA", REPO.parent / "shared" / "data"))


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


# Without a GPU, our Triton kernels run in Triton's interpreter (tests/unit/test_triton_kernels.py).
# Triton reads this when it is first imported (its own library functions are decorated then), so
# it is set here, before any test module imports it.
if not _cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real data and references); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs ../shared/data (not found at {SHARED_DATA}); CI has it, a user's clone does not")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests at collection where there is no CUDA or no mamba_ssm, with the reason shown."""
    has_cuda = _cuda()
    try:
        import mamba_ssm  # noqa: F401
        has_kernel = True
    except Exception:
        has_kernel = False
    if has_cuda and has_kernel:
        return
    reason = "needs CUDA and mamba_ssm" + ("" if has_cuda else " (no CUDA device)") + ("" if has_kernel else " (mamba_ssm not installed)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))

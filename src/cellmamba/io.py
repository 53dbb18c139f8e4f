"""File helpers shared by every stage: atomic writes, checksums, checked h5ad reading."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import CorruptFileError, InputError

__all__ = ["atomic_path", "sha256_file", "read_h5ad_checked", "ensure_parent"]


def ensure_parent(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    Works for files and directories. On any exception the temporary is removed, so nothing
    half-written is ever left at ``path``; an existing ``path`` is replaced only on success.
    """
    final = ensure_parent(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic write of {final}: nothing was written to {tmp}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def read_h5ad_checked(path: str | os.PathLike, *, backed: str | None = None):
    """Read an h5ad file, turning low-level failures into errors that name the file."""
    import anndata as ad
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (expected an .h5ad file)")
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("X", "obs", "var") if k not in fh]
    except OSError as exc:
        raise CorruptFileError(f"{path}: not a readable HDF5/h5ad file ({exc})") from exc
    if missing:
        raise CorruptFileError(f"{path}: malformed h5ad, missing group(s) {missing} (expected X, obs, var)")
    try:
        return ad.read_h5ad(path, backed=backed)
    except Exception as exc:  # anndata raises many types for damaged files
        raise CorruptFileError(f"{path}: could not be read as h5ad ({type(exc).__name__}: {exc})") from exc

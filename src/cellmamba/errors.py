"""Exceptions with messages that name the file, key or value and what was expected."""
from __future__ import annotations

__all__ = ["CellmambaError", "InputError", "CorruptFileError"]


class CellmambaError(Exception):
    """Base class of every error cellmamba raises on purpose."""


class InputError(CellmambaError, ValueError):
    """Bad input: the message names the file, key or value and what was expected."""


class CorruptFileError(CellmambaError, OSError):
    """A file exists but fails its integrity check (checksum, truncated, wrong format)."""

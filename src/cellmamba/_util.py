"""Small helpers shared by the config dataclasses."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .errors import InputError

__all__ = ["dataclass_from_dict"]


def dataclass_from_dict(cls, data: Mapping[str, Any] | None, *, where: str | None = None):
    """``cls(**data)`` for a dataclass, refusing unknown keys with an InputError naming them, the
    known ones and ``where`` (default: the class name). None is the empty mapping."""
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    return cls(**dict(data))

"""Small helpers shared by the config dataclasses and the entry points of training runs."""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Mapping

from .errors import InputError

__all__ = ["dataclass_from_dict", "seed_all"]


def seed_all(seed: int) -> None:
    """Seed every global random stream a run draws from: Python ``random``, NumPy's legacy global
    generator (third-party code such as scanpy draws from it) and torch (CPU and every CUDA device).

    Called at the top of each entry point (pretraining, fine-tuning, multi-omics, baselines), before
    the model is built, so that the same config and seed give the same weights in any process;
    the training loop seeds again (``seed + rank``) before its first step."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


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

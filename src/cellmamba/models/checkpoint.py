"""Weights on disk: safetensors only (never unpickled), loaded strictly with errors that say what differs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from ..errors import CorruptFileError, InputError

__all__ = ["parameter_counts", "WEIGHTS_NAME", "CONFIG_NAME", "VOCABULARY_NAME", "INFERENCE_NAME", "INFERENCE_FORMAT", "INFERENCE_VERSION",
           "load_state_dict_strict", "write_weights", "read_weights"]

#: file names inside a model directory
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: the gene table in token order, written beside the weights by pretraining (what embed tokenizes with)
VOCABULARY_NAME = "vocabulary.tsv"
#: what inference needs beyond config.json (context length, tokenizer settings, pooling), written
#: by pretraining's export so that a model directory is self-contained (cellmamba.embedding)
INFERENCE_NAME = "inference.json"
INFERENCE_FORMAT = "cellmamba-inference"
INFERENCE_VERSION = 1
_SHOW = 10  # keys listed per kind of mismatch


def _listing(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "state_dict") -> None:
    """Load ``state_dict`` into ``module`` only if keys and shapes match exactly.

    Raises
    ------
    InputError
        Naming the missing keys, the unexpected keys and the keys of the wrong shape (with both
        shapes), all at once, and ``source`` (e.g. the checkpoint's path).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
                   for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong)}")
    if problems:
        raise InputError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)


def write_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Write ``module``'s state_dict to a safetensors file (tensors made contiguous, on CPU)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file onto the CPU; a damaged file raises CorruptFileError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected safetensors weights)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def parameter_counts(model_dir: str | os.PathLike) -> dict[str, int]:
    """Parameters per top-level module (``backbone``, ``embedding``, ``heads``, ...) of a model
    directory, read from its safetensors header: no weights are loaded."""
    import math

    from safetensors import safe_open

    weights = Path(model_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(f"{weights}: no such file (expected the weights of a cellmamba model directory)")
    counts: dict[str, int] = {}
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            for name in fh.keys():
                part = name.split(".")[0]
                counts[part] = counts.get(part, 0) + math.prod(fh.get_slice(name).get_shape())
    except Exception as exc:  # safetensors raises its own types for damaged headers
        raise CorruptFileError(f"{weights}: unreadable safetensors header ({type(exc).__name__}: {exc})") from exc
    return counts

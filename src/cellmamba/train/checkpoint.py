"""Training checkpoints: self-describing, atomic, checksummed, and never unpickled.

A checkpoint is a directory ``<checkpoints>/step_XXXXXXXX/`` (8-digit optimizer step)::

    model/config.json, model/model.safetensors   the raw module (CellModel.write_pretrained, or the
                                                 state dict + a small config for other modules)
    optimizer.safetensors                        every tensor of optimizer.state_dict()["state"],
                                                 key "state.<param index>.<name>" (e.g. state.3.exp_avg)
    optimizer.json                               param_groups and non-tensor state values (JSON)
    rng.safetensors                              RNG states of every rank, key "rank<r>.<when>.<name>":
                                                 when = "now" (at the checkpoint) or "epoch_start" (just
                                                 before the current epoch's data iterator was created);
                                                 name = torch, cuda, python_state, python_meta,
                                                 numpy_keys, numpy_meta
    trainer.json                                 step, data position (epoch, batches consumed in it),
                                                 samples/tokens seen, world size, TrainConfig, schedule
    manifest.json                                written last: sha256 and size of every other file

The directory is written under a temporary name and renamed into place, so a crash leaves
either a complete checkpoint or none; a checkpoint damaged afterwards (truncated file, flipped
byte, missing file) fails :func:`verify_checkpoint` and :func:`latest_good_checkpoint` skips it
with an error in the log.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import CorruptFileError, InputError
from ..io import atomic_path, read_json_object, sha256_file
from ..models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict, read_weights, write_weights

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Checkpoint", "checkpoint_name", "capture_rng", "restore_rng",
           "save_checkpoint", "verify_checkpoint", "list_checkpoints", "latest_good_checkpoint",
           "load_checkpoint", "prune_checkpoints", "write_model", "export_model"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cellmamba.TrainCheckpoint"
CHECKPOINT_VERSION = 1
GENERIC_MODEL_FORMAT = "cellmamba.StateDict"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read besides the weights and optimizer state it loaded in place."""

    path: Path
    step: int
    trainer: dict  # the content of trainer.json
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # rng.safetensors, keys "rank<r>.<when>.<name>"


def checkpoint_name(step: int) -> str:
    """``step_00001000`` for step 1000."""
    return f"step_{step:08d}"


# ---------------------------------------------------------------- RNG states as tensors
def capture_rng(device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The global RNG states (torch CPU, CUDA of ``device``, Python ``random``, NumPy legacy) as tensors.

    Fixed shapes and dtypes, so ranks can all-gather them and safetensors can store them.
    """
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    if kind != "MT19937":  # pragma: no cover - numpy's legacy global generator is always MT19937
        raise InputError(f"unsupported numpy RNG {kind!r}")
    states = {
        "torch": torch.get_rng_state(),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": torch.tensor([version, gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "numpy_meta": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng(states: dict[str, torch.Tensor], device: torch.device | str | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(states["torch"].to(torch.uint8).cpu())
    meta = states["python_meta"].tolist()
    random.setstate((int(meta[0]), tuple(int(v) for v in states["python_state"].tolist()),
                     float(meta[2]) if meta[1] else None))
    nmeta = states["numpy_meta"].tolist()
    np.random.set_state(("MT19937", states["numpy_keys"].numpy().astype(np.uint32), int(nmeta[0]),
                         int(nmeta[1]), float(nmeta[2])))
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8).cpu(), device)


# ---------------------------------------------------------------- model directory
def _model_config(model: nn.Module):
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else None


def write_model(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``model`` into an existing ``directory``: its own ``write_pretrained`` when it has one,
    else ``model.safetensors`` (the state dict) + ``config.json`` (class name and ``model.config.to_dict()``
    when available)."""
    directory = Path(directory)
    if hasattr(model, "write_pretrained"):
        model.write_pretrained(directory)
        return
    write_weights(model, directory / WEIGHTS_NAME)
    meta = {"format": GENERIC_MODEL_FORMAT, "class": f"{type(model).__module__}.{type(model).__qualname__}",
            "config": _model_config(model)}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def export_model(model: nn.Module, directory: str | os.PathLike,
                 extra_files: Mapping[str, str | os.PathLike | bytes] | None = None) -> Path:
    """Save ``model`` (the raw module) to ``directory`` atomically; see :func:`write_model`.
    ``extra_files`` (name in the directory -> source file, or bytes: the content) are written
    in before the rename, so the directory appears complete or not at all."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        write_model(model, tmp)
        for name, source in (extra_files or {}).items():
            if isinstance(source, bytes):
                (tmp / name).write_bytes(source)
            else:
                shutil.copyfile(source, tmp / name)
    return Path(directory)


def _read_json(path: Path) -> dict:
    return read_json_object(path, what="a checkpoint's JSON", missing=CorruptFileError)


def _load_model(model: nn.Module, directory: Path) -> None:
    meta = _read_json(directory / CONFIG_NAME)
    saved, current = meta.get("config"), _model_config(model)
    if saved is not None and current is not None and json.loads(json.dumps(current)) != saved:
        raise InputError(f"{directory / CONFIG_NAME}: the checkpoint's model config differs from the model's "
                         f"(saved {saved}, model {current})")
    load_state_dict_strict(model, read_weights(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))


# ---------------------------------------------------------------- optimizer without pickle
def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def _optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                          source: str) -> None:
    current = optimizer.state_dict()["param_groups"]
    saved = meta.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(current) or any(
            len(s.get("params", [])) != len(c["params"]) for s, c in zip(saved, current)):
        raise InputError(f"{source}: optimizer parameter groups do not fit the model's "
                         f"(saved sizes {[len(s.get('params', [])) for s in saved or []]}, "
                         f"model {[len(c['params']) for c in current]})")
    groups = []
    for s, c in zip(saved, current):  # JSON turned tuples (betas) into lists
        groups.append({k: tuple(v) if isinstance(c.get(k), tuple) and isinstance(v, list) else v for k, v in s.items()})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------- save / verify / load
def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    trainer_state: dict, rng_states: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, fsync, rename).

    Parameters
    ----------
    directory
        The checkpoint's path, e.g. ``out_dir/checkpoints/step_00001000``; replaced if it exists.
    model
        The raw module (not the DDP/compile wrapper: :func:`cellmamba.train.distributed.unwrap`).
    optimizer
        Its state dict is stored as safetensors (tensors) + JSON (everything else).
    trainer_state
        JSON-serialisable dict, must hold ``"step"`` (int); stored as trainer.json.
    rng_states
        Tensors stored as rng.safetensors (the loop stores every rank's states there).

    Returns
    -------
    Path
        ``directory``.
    """
    from safetensors.torch import save_file

    if not isinstance(trainer_state.get("step"), int):
        raise InputError("save_checkpoint: trainer_state must hold an integer 'step'")
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        (tmp / "model").mkdir()
        write_model(model, tmp / "model")
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta, indent=1) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in (rng_states or {}).items()},
                  str(tmp / "rng.safetensors"), metadata={"format": "pt"})
        meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **trainer_state}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=2) + "\n")
        files = {p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                    "step": trainer_state["step"], "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(tmp)
    return Path(directory)


def verify_checkpoint(directory: str | os.PathLike) -> dict:
    """Check every file against the manifest (presence, size, sha256).

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    CorruptFileError
        Naming the checkpoint, the file and what is wrong (missing, truncated, checksum).
    """
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST)
    if manifest.get("format") != CHECKPOINT_FORMAT or not isinstance(manifest.get("files"), dict):
        raise CorruptFileError(f"{directory / MANIFEST}: not a {CHECKPOINT_FORMAT} manifest")
    if manifest.get("format_version") != CHECKPOINT_VERSION:
        raise CorruptFileError(f"{directory / MANIFEST}: format_version {manifest.get('format_version')!r} "
                               f"is not supported (this cellmamba reads {CHECKPOINT_VERSION})")
    for rel, entry in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            raise CorruptFileError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise CorruptFileError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')} (truncated?)")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise CorruptFileError(f"{path}: sha256 {digest} does not match the manifest's {entry.get('sha256')}")
    return manifest


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories (``step_XXXXXXXX``) in ``checkpoints_dir``, oldest step first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_good_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint that passes :func:`verify_checkpoint`; damaged ones are logged (ERROR) and skipped."""
    candidates = list_checkpoints(checkpoints_dir)
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
        except CorruptFileError as exc:
            log.error("checkpoint %s is corrupt and is skipped (falling back to an older one): %s", path, exc)
            continue
        return path
    if candidates:
        log.error("no good checkpoint in %s (all %d damaged): training starts from scratch",
                  checkpoints_dir, len(candidates))
    return None


def load_checkpoint(directory: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, *, verify: bool = True) -> Checkpoint:
    """Load a checkpoint's weights into ``model`` (strictly) and, if given, its state into ``optimizer``.

    Parameters
    ----------
    directory
        A checkpoint directory written by :func:`save_checkpoint`.
    model
        The raw module, built with the same config.
    optimizer
        Built over the same parameters in the same order (:func:`cellmamba.train.schedule.build_optimizer`).
    verify
        Check checksums first (:func:`verify_checkpoint`).

    Returns
    -------
    Checkpoint
        Step, trainer.json and RNG tensors (restoring RNG and data position is the loop's job).

    Raises
    ------
    CorruptFileError
        A damaged checkpoint. InputError: one that does not fit ``model`` / ``optimizer``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such checkpoint directory")
    if verify:
        verify_checkpoint(directory)
    trainer = _read_json(directory / "trainer.json")
    if trainer.get("format") != CHECKPOINT_FORMAT or not isinstance(trainer.get("step"), int):
        raise CorruptFileError(f"{directory / 'trainer.json'}: not a {CHECKPOINT_FORMAT} trainer state")

    def _tensors(name: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(directory / name), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptFileError(f"{directory / name}: not a readable safetensors file ({exc})") from exc

    _load_model(model, directory / "model")
    if optimizer is not None:
        _optimizer_from_files(optimizer, _tensors("optimizer.safetensors"),
                              _read_json(directory / "optimizer.json"), str(directory))
    return Checkpoint(directory, trainer["step"], trainer, _tensors("rng.safetensors"))


def prune_checkpoints(checkpoints_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoints (None keeps all); returns what was removed."""
    if keep is None:
        return []
    doomed = list_checkpoints(checkpoints_dir)[:-keep] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed

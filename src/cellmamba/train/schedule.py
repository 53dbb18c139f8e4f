"""Optimizer and learning-rate schedule: AdamW with decoupled weight decay on matrices only,
linear warmup then cosine decay.

The schedule is a pure function of the optimizer step (:func:`lr_at`), so its "state" in a
checkpoint is just the step and the schedule's settings; nothing stateful needs restoring.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .loop import TrainConfig

__all__ = ["lr_at", "param_groups", "build_optimizer", "set_lr"]

# Modules whose parameters are never decayed (normalisation layers, embeddings' padding rows are not special).
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                                            nn.BatchNorm3d, nn.InstanceNorm1d, nn.LocalResponseNorm)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def lr_at(step: int, config: "TrainConfig") -> float:
    """Learning rate of optimizer update number ``step`` (0-based).

    ``lr * (step + 1) / warmup_steps`` while ``step < warmup_steps``; then cosine decay from
    ``lr`` to ``lr * min_lr_ratio`` over the remaining ``max_steps - warmup_steps`` updates:
    ``min + (lr - min) * 0.5 * (1 + cos(pi * (step - warmup_steps) / (max_steps - warmup_steps)))``,
    held at the minimum after ``max_steps``.
    """
    if step < 0:
        raise InputError(f"lr_at: step must be >= 0, got {step}")
    base, warmup = config.lr, config.warmup_steps
    if step < warmup:
        return base * (step + 1) / warmup
    floor = base * config.min_lr_ratio
    decay_steps = config.max_steps - warmup
    if decay_steps <= 0:
        return base
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Not decayed: parameters with a true ``_no_weight_decay`` attribute (e.g. the SSM's A_log and
    D), every bias, every parameter of a normalisation module (class name containing "Norm" or a
    torch norm layer), and every 0-d/1-d parameter. Decayed: the rest (weight matrices,
    embeddings). Shared parameters are counted once.

    A parameter with an ``_lr_scale`` attribute other than 1 (e.g. a fresh adversarial head
    that must learn faster than the encoder it judges) goes to a group of its own per scale,
    after the two, with ``"lr_scale"``: :func:`set_lr` gives that group ``lr * lr_scale``.

    Returns
    -------
    list of dict
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``,
        then, only where parameters are scaled, ``{"params", "weight_decay", "lr_scale"}`` groups
        (decayed, then not, per scale in first-seen order); parameters in
        ``model.named_parameters()`` order within each (the order fixes optimizer-state indices
        in checkpoints).
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if _is_norm(module):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[float, bool], list] = {(1.0, True): [], (1.0, False): []}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        scale = float(getattr(p, "_lr_scale", 1.0))
        if not (math.isfinite(scale) and scale > 0):
            raise InputError(f"parameter {name}: _lr_scale must be a finite number > 0, got {scale!r}")
        decayed = not (getattr(p, "_no_weight_decay", False) or name.endswith("bias") or id(p) in no_decay_ids
                       or p.ndim < 2)
        groups.setdefault((scale, True), [])
        groups.setdefault((scale, False), [])
        groups[(scale, decayed)].append(p)
    out = []
    for (scale, decayed), params in groups.items():
        if scale != 1.0 and not params:
            continue
        group = {"params": params, "weight_decay": weight_decay if decayed else 0.0}
        if scale != 1.0:
            group["lr_scale"] = scale
        out.append(group)
    return out


#: devices with torch's fused AdamW kernel (torch >= 2.4 for the CPU): it takes ``found_inf``, so a
#: non-finite step is skipped on the device (:func:`cellmamba.train.loop.train_step`), and it is one
#: kernel per step for all parameters
FUSED_DEVICES = ("cuda", "cpu")


def build_optimizer(model: nn.Module, config: "TrainConfig") -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the config's betas and eps; lr is set per step by
    :func:`set_lr`. Fused (one kernel; the skip of a non-finite step decided on the device) where
    every parameter is on a device of :data:`FUSED_DEVICES`, else torch's default implementation."""
    groups = param_groups(model, config.weight_decay)
    if not any(g["params"] for g in groups):
        raise InputError(f"{type(model).__name__} has no trainable parameters")
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=lr_at(0, config), betas=tuple(config.betas), eps=config.eps,
                                  weight_decay=config.weight_decay, fused=fused or None)
    set_lr(optimizer, lr_at(0, config))
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group: ``lr``, times the group's ``lr_scale`` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

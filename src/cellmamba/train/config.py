"""The settings of a training run: :class:`TrainConfig` (what the loop reads: steps, AdamW,
schedule, bookkeeping) and :class:`OptimConfig` (the optimisation block the tasks' settings
share: epochs over their training cells, translated to a TrainConfig by one rule).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar, Mapping

from .._util import dataclass_from_dict
from ..errors import InputError

__all__ = ["PRECISIONS", "BACKENDS", "TrainConfig", "OptimConfig", "check_optim", "steps_per_epoch"]

PRECISIONS = ("auto", "bf16", "fp32")
#: SSM kernels (cellmamba.models.backbone): "auto" falls back to the PyTorch reference, "cuda" insists
BACKENDS = ("auto", "torch", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings of one training run (JSON round trip: to_dict / from_dict)."""

    lr: float = 3e-4  # peak learning rate (after warmup)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    weight_decay: float = 0.01  # AdamW decoupled decay; never on biases, norms, 1-d or `_no_weight_decay` params
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 1000  # linear warmup from lr/warmup_steps to lr (0 = none)
    max_steps: int = 100_000  # optimizer steps in total (resume continues up to this)
    grad_clip: float | None = 1.0  # max global grad norm; None or 0 = no clipping (norm still logged)
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = batch_size * grad_accum * world size)
    batch_size: int = 32  # per-rank micro-batch size; checked against loader.batch_size where the loader has one
    log_every: int = 10  # steps between metrics.csv rows / log lines
    eval_every: int = 0  # steps between evaluations on eval_data (0 = only at the end, if eval_data is given)
    eval_batches: int | None = None  # cap on evaluation batches per rank (None = the whole eval loader)
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at max_steps)
    keep_checkpoints: int | None = 3  # newest checkpoints kept on disk (None = all)
    seed: int = 0  # seeds torch / numpy / random at the start (rank r uses seed + r); model init is the caller's
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16" (CUDA only, else InputError); "fp32"
    dist_backend: str = "auto"  # torch.distributed backend: "auto" (nccl on CUDA, gloo on CPU), "nccl", "gloo"
    find_unused_parameters: bool = False  # DDP option, for models with parameters unused in some steps
    compile: bool = False  # torch.compile the (DDP-wrapped) model; checkpoints still save the raw module
    progress: bool = True  # tqdm progress bar on rank 0
    keep_best: bool = False  # export the weights of the evaluation with the lowest eval loss, not the last (needs eval_data)

    def __post_init__(self):
        def need(cond: bool, what: str):
            if not cond:
                raise InputError(f"TrainConfig: {what}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(len(tuple(self.betas)) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        need(self.grad_clip is None or self.grad_clip >= 0, f"grad_clip must be >= 0 or None, got {self.grad_clip}")
        for name in ("grad_accum", "batch_size", "log_every", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        need(self.eval_batches is None or self.eval_batches >= 1, f"eval_batches must be >= 1 or None, got {self.eval_batches}")
        need(self.keep_checkpoints is None or self.keep_checkpoints >= 1,
             f"keep_checkpoints must be >= 1 or None, got {self.keep_checkpoints}")
        need(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        need(self.dist_backend in ("auto", "nccl", "gloo"), f"dist_backend must be auto, nccl or gloo, got {self.dist_backend!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data)


def steps_per_epoch(n_cells: int, batch_size: int, *, drop_last: bool) -> int:
    """Optimizer steps in one pass over ``n_cells``: the batches the epoch's loader yields, the
    incomplete last one dropped (``drop_last``: floor) or kept (ceil); at least 1 when
    ``batch_size <= n_cells``."""
    return n_cells // batch_size if drop_last else math.ceil(n_cells / batch_size)


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def check_optim(config) -> None:
    """The one validation of the optimisation settings a config dataclass has (any of epochs,
    batch_size, micro_batch_size, lr, weight_decay, warmup_fraction, seed, precision, backend):
    an InputError naming the class and the field. ``micro_batch_size`` must divide
    ``batch_size`` where micro-batches are accumulated (``config.accumulate``, default True)."""
    def need(ok, what):
        if not ok:
            raise InputError(f"{type(config).__name__}: {what}")

    has = {f.name for f in dataclasses.fields(config)}
    for name in ("epochs", "batch_size"):
        v = getattr(config, name, 1)
        need(_is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
    if "micro_batch_size" in has:
        m = config.micro_batch_size
        if getattr(config, "accumulate", True):
            need(m is None or (_is_int(m) and m >= 1 and config.batch_size % m == 0),
                 f"micro_batch_size must be None or an integer >= 1 that divides batch_size ({config.batch_size}), "
                 f"got {m!r}")
        else:
            need(m is None or (_is_int(m) and m >= 1), f"micro_batch_size must be None or an integer >= 1, got {m!r}")
    lr, wd = getattr(config, "lr", 1.0), getattr(config, "weight_decay", 0.0)
    need(_is_number(lr) and lr > 0, f"lr must be a finite number > 0, got {lr!r}")
    need(_is_number(wd) and wd >= 0, f"weight_decay must be a finite number >= 0, got {wd!r}")
    if "warmup_fraction" in has:
        w = config.warmup_fraction
        need(_is_number(w) and 0 <= w < 1, f"warmup_fraction must be in [0, 1), got {w!r}")
    seed = getattr(config, "seed", 0)
    need(_is_int(seed) and seed >= 0, f"seed must be an integer >= 0, got {seed!r}")
    if "precision" in has:
        need(config.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if "backend" in has:
        need(config.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {config.backend!r}")


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation block of a task's settings: ``epochs`` passes over its training cells in
    steps of ``batch_size`` cells, AdamW with linear warm-up then cosine decay.

    A task's config dataclass derives from it, redeclaring the defaults it differs in (the YAML
    keys are the field names, flat beside the task's own); :func:`check_optim` validates the
    block (a subclass's ``__post_init__`` calls ``super().__post_init__()`` first),
    :meth:`to_train_config` translates it to the loop's :class:`TrainConfig`.
    """

    epochs: int = 10                  # passes over the training cells
    lr: float = 1e-4                  # peak learning rate
    batch_size: int = 32              # cells per optimizer step
    micro_batch_size: int | None = None  # cells per forward / backward pass (GPU memory); None = batch_size
    warmup_fraction: float = 0.05     # fraction of the steps of linear warm-up before cosine decay
    weight_decay: float = 0.0         # AdamW decoupled weight decay
    seed: int = 0                     # initialisation, data order, masks
    precision: str = "auto"           # "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"
    backend: str = "auto"             # SSM kernels: auto | torch | cuda

    #: the task's loader drops each epoch's incomplete last batch (InfoNCE wants full batches)
    drop_last: ClassVar[bool] = False
    #: micro-batches of ``micro_batch_size`` cells are accumulated into one step (so it must divide
    #: ``batch_size``); False: the objective splits the batch itself (recomputed passes)
    accumulate: ClassVar[bool] = True

    def __post_init__(self):
        check_optim(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        """Build from a mapping of field names (the YAML keys); unknown keys raise InputError."""
        return dataclass_from_dict(cls, data)

    def to_train_config(self, n_train_cells: int, *, validate_epochs: bool = False) -> TrainConfig:
        """The loop's settings for ``epochs`` passes over ``n_train_cells``.

        Steps per epoch are the batches of ``min(batch_size, n_train_cells)`` cells the task's
        loader yields (:func:`steps_per_epoch`: ceil, or floor where it drops the last incomplete
        batch). ``validate_epochs`` (there is validation data): evaluate after every epoch and,
        with ``keep_best``, keep the weights of the epoch with the lowest validation loss.

        With ``micro_batch_size`` (and :attr:`accumulate`) the loop reads micro-batches of that
        many cells and accumulates gradients over ``batch_size / micro_batch_size`` of them per
        optimizer step: the same cells per step and steps per epoch, in less GPU memory (each
        micro-batch's loss is its own mean, so losses averaged over masked tokens weight
        micro-batches equally).
        """
        batch_size = min(self.batch_size, n_train_cells)
        per_epoch = steps_per_epoch(n_train_cells, batch_size, drop_last=self.drop_last)
        steps = self.epochs * per_epoch
        micro = self.micro_batch_size if self.accumulate else None
        accum = math.ceil(batch_size / micro) if micro is not None and micro < batch_size else 1
        return TrainConfig(lr=self.lr, warmup_steps=int(self.warmup_fraction * steps), max_steps=steps,
                           batch_size=micro if accum > 1 else batch_size, grad_accum=accum,
                           weight_decay=self.weight_decay, log_every=max(1, min(50, steps // 20)),
                           checkpoint_every=max(steps // 4, 1), keep_checkpoints=1, seed=self.seed,
                           precision=self.precision, eval_every=per_epoch if validate_epochs else 0,
                           keep_best=validate_epochs and getattr(self, "keep_best", False))

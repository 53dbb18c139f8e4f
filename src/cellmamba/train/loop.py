"""The training loop: functions (:func:`train`, :func:`train_step`, :func:`evaluate`, :func:`resume`)
over any model, any objective and any loader of dict batches.

Objective interface: ``objective(model, batch) -> (loss, metrics)`` with ``loss`` a scalar
tensor (mean over the batch) and ``metrics`` a dict of 0-d tensors (detached, on the batch's device)
or numbers; :func:`train_step` reads them from the device once per optimizer step, with the
gradient norm, so an objective never waits for the GPU. ``model`` is the module
being trained, possibly DDP-wrapped (attribute look-ups such as ``model.heads`` reach the raw
module either way).

Outputs in ``out_dir``: ``checkpoints/step_XXXXXXXX/`` (:mod:`cellmamba.train.checkpoint`),
``metrics.csv`` (step, epoch, loss, lr, grad_norm, tokens_per_s, samples, tokens, objective
metrics; on a GPU also peak_gib, the peak memory since the previous row, and mfu, 6 x parameters x
tokens/s over the GPU's dense bf16 / fp16 peak: :func:`~cellmamba.train.metrics_log.peak_flops`),
``eval_metrics.csv``, ``model/`` (final weights, or with ``keep_best`` those of the
evaluation with the lowest loss, + config.json), ``best/`` (``keep_best``: those weights, kept
across a resume), ``provenance.json``, ``loss_curve.png`` (if matplotlib is installed) and
``tensorboard/`` (if tensorboard is).

Components, one module each: the batch stream and its resumable position
(:mod:`~cellmamba.train.batches`), metrics.csv / tensorboard / the loss curve
(:mod:`~cellmamba.train.metrics_log`), keep_best's weights (:mod:`~cellmamba.train.best`),
precision and autocast (:mod:`~cellmamba.train.precision`).

Determinism after resume: see :class:`~cellmamba.train.batches.BatchStream`. On the CPU, N
uninterrupted steps and N/2 + crash + resume + N/2 give bit-identical parameters
(tests/unit/test_train_checkpoint.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .._util import seed_all
from ..errors import CellmambaError, CorruptFileError, InputError
from ..io import atomic_path
from .batches import BatchStream, batch_counts, batch_rows, micro_batches, rank_rng, to_device
from .best import BestWeights
from .checkpoint import (Checkpoint, capture_rng, checkpoint_name, export_model, latest_good_checkpoint,
                         load_checkpoint, prune_checkpoints, restore_rng, save_checkpoint)
from .config import TrainConfig
from .distributed import (DistEnv, all_gather_tensors, all_reduce_mean, barrier, broadcast_int,
                          destroy_distributed, init_distributed, unwrap, wrap_ddp)
from .metrics_log import MetricsCSV, model_flops_utilisation, peak_flops, plot_loss_curve, tensorboard_writer
from .precision import PRECISIONS, autocast, resolve_precision
from .schedule import build_optimizer, lr_at, set_lr

__all__ = ["PRECISIONS", "TrainConfig", "TrainState", "train", "train_step", "evaluate", "resume",
           "resolve_precision", "plot_loss_curve"]

log = logging.getLogger(__name__)

_batch_counts = batch_counts  # benchmarks/rehearse.py counts the batches of its timed steps as loop._batch_counts
Objective = Callable[[nn.Module, Mapping[str, Any]], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class TrainState:
    """Where training stands: optimizer ``step`` and the data position (``epoch``, micro-batches
    consumed in it per rank); ``samples`` and ``tokens`` seen over all ranks."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0
    tokens: int = 0
    resumed_from: str | None = None  # checkpoint path this run started from
    best_step: int | None = None  # keep_best: step of the evaluation whose weights were exported
    best_eval_loss: float | None = None  # keep_best: its eval loss
    last_metrics: dict[str, float] = field(default_factory=dict)  # the latest logged row


def _find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return None


def _add_metric(sums: dict, key: str, value, device: torch.device, weight: float = 1.0) -> None:
    """``sums[key] += weight * value``: a tensor stays on ``device`` (float64, read later, once), a number
    stays a float."""
    value = value.detach().to(device=device, dtype=torch.float64) if torch.is_tensor(value) else float(value)
    sums[key] = sums[key] + value * weight if key in sums else value * weight


def _call_objective(objective: Objective, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict]:
    out = objective(model, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InputError(f"objective must return (loss, metrics), got {type(out).__name__}")
    loss, metrics = out
    if not (torch.is_tensor(loss) and loss.ndim == 0):
        raise InputError(f"objective's loss must be a scalar tensor, got "
                         f"{tuple(loss.shape) if torch.is_tensor(loss) else type(loss).__name__}")
    return loss, dict(metrics or {})


def train_step(model: nn.Module, objective: Objective, batches: list[Mapping[str, Any]], *,
               optimizer: torch.optim.Optimizer, config: TrainConfig, step: int,
               device: torch.device | str | None = None, read: bool = True) -> dict[str, Any]:
    """One optimizer update over ``len(batches)`` micro-batches (gradient accumulation).

    Sets the learning rate to ``lr_at(step, config)`` and, for an objective with a ``set_step``
    method (a schedule inside the objective, e.g. the adversarial reversal weight), calls
    ``objective.set_step(step, config.max_steps)``: the schedule follows the optimizer step, so a
    resumed run continues it where it stopped. Each micro-batch's loss is weighted by its share of
    the step's cells before backward (1 / k for k equal micro-batches, so k micro-batches of b rows
    equal one batch of k*b rows for a per-cell mean loss; the passes of a token budget hold
    different numbers of cells); under DDP gradients are synchronised on the last micro-batch only;
    then the gradient norm is clipped to ``config.grad_clip`` and AdamW steps. A non-finite
    gradient norm skips the update (logged as a warning). With a fused AdamW
    (:func:`~cellmamba.train.schedule.build_optimizer`) the skip is decided on the device (the
    kernel's ``found_inf``, as torch's GradScaler uses it: no change to weights, moments or step
    count), so with ``read=False`` the step never waits for the device; another optimizer needs
    the norm on the host first (one read).

    Clipping is per learning-rate scale (:func:`clip_sets`): the model's parameters together, and
    the parameters of each ``lr_scale`` group (a fresh adversarial head) on their own. Under one
    global clip, a large gradient reversed into the encoder also shrank the discriminator's
    step, so the encoder outran the discriminator it is judged by. That happened in the
    paper-size rehearsal: the rank Transformer's integration, gradient norms 200-1,000, the
    adversary's loss at 27 against ln 2 at chance. Without scaled groups this is the global clip.

    Parameters
    ----------
    model
        The module to train (raw, DDP-wrapped or compiled), already on ``device``.
    objective
        ``objective(model, batch) -> (loss, metrics)``.
    batches
        Micro-batches (dicts of tensors), moved to ``device`` here.
    read
        Read the values into Python numbers (one transfer). ``False``: they stay 0-d float64
        tensors on the device (the loop sums them and reads once per log row, where it also
        reports skipped updates); ``lr`` and an objective's plain numbers stay floats.

    Returns
    -------
    dict
        ``loss`` and objective metrics (means over micro-batches weighted by their cells, this rank), ``lr``, ``grad_norm``
        (global, before clipping), ``grad_norm_lr_x<scale>`` (that of each scaled group, before
        clipping; only where there is one), ``skipped`` (1.0 if the update was skipped).
    """
    if not batches:
        raise InputError("train_step needs at least one micro-batch")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    precision = resolve_precision(config.precision, device)
    lr = lr_at(step, config)
    set_lr(optimizer, lr)
    if hasattr(objective, "set_step"):
        objective.set_step(step, config.max_steps)
    model.train()
    ddp = _find_ddp(model)
    n = len(batches)
    # each micro-batch weighs as many cells as it holds (equal micro-batches: 1 / n each)
    rows = [batch_rows(b) for b in batches]
    shares = [sum(rows) / r for r in rows] if all(rows) else [float(n)] * n
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    metric_sums: dict[str, torch.Tensor | float] = {}  # tensors on the device: read once, with the gradient norm
    for i, batch in enumerate(batches):
        batch = to_device(batch, device)
        sync = ddp is None or i == n - 1
        with (contextlib.nullcontext() if sync else ddp.no_sync()):
            with autocast(device, precision):
                loss, metrics = _call_objective(objective, model, batch)
            (loss / shares[i]).backward()
        loss_sum += loss.detach().to(torch.float64) / shares[i]
        for k, v in metrics.items():
            _add_metric(metric_sums, k, v, device, 1.0 / shares[i])
    max_norm = config.grad_clip if config.grad_clip else math.inf
    norms = {scale: torch.nn.utils.clip_grad_norm_(params, max_norm).detach().to(device=device, dtype=torch.float64)
             for scale, params in clip_sets(optimizer).items()}
    grad_norm = (torch.stack(list(norms.values())).square().sum().sqrt() if norms
                 else torch.zeros((), dtype=torch.float64, device=device))
    not_finite = ~torch.isfinite(grad_norm)
    if device_skip(optimizer):
        # the fused kernel leaves weights, moments and step count alone where found_inf is 1
        optimizer.grad_scale, optimizer.found_inf = None, not_finite.to(torch.float32)
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
    elif not bool(not_finite):  # the update waits for the host's decision: one read
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "skipped": not_finite.to(torch.float64),
           **{f"grad_norm_lr_x{scale:g}": norm for scale, norm in norms.items() if scale != 1.0}}
    out.update({k: v for k, v in metric_sums.items() if k not in out})
    if not read:
        return out
    read_values(out)
    if out["skipped"]:
        log.warning("step %d: gradient norm is %s; the update is skipped", step, out["grad_norm"])
    return out


def read_values(values: dict) -> dict:
    """Replace the tensors of ``values`` by Python numbers, in one transfer from the device; in place."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    if keys:
        values.update(zip(keys, torch.stack([values[k].detach().to(torch.float64) for k in keys]).tolist()))
    return values


def device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` skips a non-finite update on the device: a fused Adam / AdamW takes
    ``found_inf`` (torch's GradScaler interface), so the step needs no host read."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False) and optimizer.defaults.get("fused"))


def clip_sets(optimizer: torch.optim.Optimizer) -> dict[float, list[torch.Tensor]]:
    """The parameters with a gradient, by the ``lr_scale`` of their optimizer group (1.0 where a
    group has none), in group order: each set is clipped on its own (:func:`train_step`)."""
    sets: dict[float, list[torch.Tensor]] = {}
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            sets.setdefault(float(group.get("lr_scale", 1.0)), []).extend(params)
    return sets


@contextlib.contextmanager
def _rng_fork(device: torch.device):
    """Run a block without disturbing the global RNG streams (evaluation must not change training)."""
    saved = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(saved, device)


def evaluate(model: nn.Module, objective: Objective, data: Iterable[Mapping[str, Any]], *,
             device: torch.device | str | None = None, precision: str = "auto", max_batches: int | None = None,
             env: DistEnv | None = None) -> dict[str, float]:
    """Mean loss and metrics of ``objective`` over the cells of ``data`` (no gradients, eval mode,
    RNG untouched).

    Each batch's loss and metrics are weighted by its number of cells (the leading dimension of
    its ``input_ids``: :func:`~cellmamba.train.batches.batch_counts`), so a smaller last batch
    counts as many cells as it holds, not as a full batch. For a per-cell mean (a classifier's
    cross-entropy and accuracy, an MSE over the same number of positions in every cell) the
    result is the mean over all cells. For a mean over a varying number of tokens (masked-value
    MSE, masked-gene cross-entropy) it is the cell-weighted mean of the batches' token means,
    which equals the token mean over all cells only where every cell has as many such tokens; a
    per-batch count (``n_masked``, ``n_targets``) comes out as the cell-weighted mean count per
    batch. A loader that repeats cells (wrap-padding) counts them twice; the fine-tuning
    validation loaders repeat none (:func:`cellmamba.tasks.finetune.train_valid_loaders`).

    Parameters
    ----------
    model
        Evaluated in eval mode; its training mode is restored afterwards. Pass the raw module
        (not DDP) when ranks may see different numbers of batches.
    objective
        ``objective(model, batch) -> (loss, metrics)``, ``loss`` a mean over the batch.
    data
        Iterable of dict batches (this rank's share), each holding a tensor whose leading
        dimension is its cells.
    max_batches
        Stop after this many batches per rank.
    env
        When distributed, the cell-weighted sums and the cell counts are summed over ranks: the
        result is the mean over every rank's cells (ranks weighted by their cell counts).

    Returns
    -------
    dict
        ``{"loss": ..., <metric>: ...}``; means over cells. The global RNG states are restored
        afterwards, so evaluating does not change the training that follows.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    was_training = model.training
    sums: dict[str, torch.Tensor | float] = {}  # over batches: the batch's mean x its number of cells
    n_batches, n_cells = 0, 0

    with _rng_fork(device), torch.no_grad():
        model.eval()
        try:
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                batch = to_device(batch, device)
                cells = batch_rows(batch)  # from the shape: no read of the device
                with autocast(device, prec):
                    loss, metrics = _call_objective(objective, model, batch)
                _add_metric(sums, "loss", loss, device, cells)
                for k, v in metrics.items():
                    if k != "loss":
                        _add_metric(sums, k, v, device, cells)
                n_batches += 1
                n_cells += cells
        finally:
            model.train(was_training)
    keys = sorted(sums)
    read_values(sums)
    if env is not None and env.distributed:
        vec = torch.tensor([n_batches, n_cells] + [sums[k] for k in keys], dtype=torch.float64)
        total = all_reduce_mean(vec, env) * env.world_size
        n_batches, n_cells = int(round(float(total[0]))), int(round(float(total[1])))
        sums = dict(zip(keys, total[2:].tolist()))
    if n_batches == 0:
        raise InputError("evaluate: the evaluation data yielded no batches")
    if n_cells == 0:
        raise InputError("evaluate: the evaluation batches hold no cells (no tensor with a leading batch dimension)")
    return {k: sums[k] / n_cells for k in keys}


# ---------------------------------------------------------------- resume
def resume(model: nn.Module, optimizer: torch.optim.Optimizer, out_dir: str | os.PathLike, *,
           env: DistEnv | None = None) -> Checkpoint | None:
    """Load the newest good checkpoint of ``out_dir/checkpoints`` into ``model`` and ``optimizer``.

    Rank 0 picks it (damaged checkpoints are skipped with an ERROR in the log) and every rank
    loads the same one. Returns None when there is none (a fresh start).

    Parameters
    ----------
    model
        The raw module.
    optimizer
        Built by :func:`cellmamba.train.schedule.build_optimizer` over ``model``.
    out_dir
        The training output directory.
    """
    env = env or DistEnv()
    root = Path(out_dir) / "checkpoints"
    step = -1
    if env.is_main:
        path = latest_good_checkpoint(root)
        step = -1 if path is None else int(path.name.split("_")[1])
    step = broadcast_int(step, env)
    if step < 0:
        return None
    # not hashed again: rank 0's latest_good_checkpoint has just checked every file's size and sha256
    ckpt = load_checkpoint(root / checkpoint_name(step), model, optimizer, verify=False)
    log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt


def _final_data_check(data_check: Callable[[bool], None], env: DistEnv) -> None:
    """``data_check(True)`` on every rank; every rank raises if any rank's check failed."""
    error = None
    try:
        data_check(True)
    except CellmambaError as exc:
        error = exc
    failed = all_reduce_mean(torch.tensor([float(error is not None)]), env)[0].item() > 0
    if error is not None:
        raise error
    if failed:
        raise CorruptFileError("another rank found damaged training data (see its log); nothing was exported")


def _write_provenance(path: Path, info: dict) -> None:
    from ..runlog import provenance

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(provenance(info), indent=2, default=str) + "\n")


# ---------------------------------------------------------------- the loop
def train(model: nn.Module, objective: Objective, data: Any, config: TrainConfig, *,
          out_dir: str | os.PathLike, eval_data: Iterable | None = None,
          device: torch.device | str | None = None, auto_resume: bool = True,
          step_callback: Callable[[TrainState], None] | None = None,
          model_files: Mapping[str, str | os.PathLike | bytes] | None = None,
          data_check: Callable[[bool], None] | None = None) -> TrainState:
    """Train ``model`` on ``data`` with ``objective`` until ``config.max_steps``, resuming automatically.

    Works single-process and under ``torchrun`` (DDP; nccl on CUDA, gloo on CPU; the process
    group is initialised from the environment and torn down at the end if this call made it).

    Parameters
    ----------
    model
        The raw module (e.g. a CellModel), built with its final config; moved to the device here.
    objective
        ``objective(model, batch) -> (loss: scalar tensor, metrics: dict of 0-d tensors or numbers)``.
    data
        A re-iterable loader of dict batches (this rank's share: use a DistributedSampler or
        similar with ``set_epoch``) or a factory ``data(epoch) -> iterable``.
    config
        :class:`TrainConfig`.
    out_dir
        Output directory (see the module docstring for its contents).
    eval_data
        Optional loader for :func:`evaluate`, every ``config.eval_every`` steps and at the end;
        needed by ``config.keep_best`` (then the weights of the evaluation with the lowest loss
        are exported and left in ``model``, as scGPT keeps its best-validation model).
    device
        Default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    auto_resume
        Resume from the newest good checkpoint in ``out_dir/checkpoints`` (default).
    step_callback
        Called with the :class:`TrainState` after every step (after any checkpoint of that step).
    model_files
        Files to ship inside the exported ``out_dir/model`` (name -> source path, e.g. the gene
        vocabulary, or bytes: the content), written with the weights in one atomic export.
    data_check
        ``data_check(final)`` raising :class:`~cellmamba.errors.CellmambaError` when the training
        data turned out damaged (e.g. :meth:`cellmamba.tokenize.ShardVerifier.check`): called on
        every rank after each step (``final=False``, must not block) and once before the export
        (``final=True``, may wait); if any rank's final check fails, no rank exports anything.

    Returns
    -------
    TrainState
        The final state; ``last_metrics`` holds the last logged row.
    """
    if config.keep_best and eval_data is None:
        raise InputError("TrainConfig.keep_best selects the weights of the best evaluation: it needs eval_data")
    env = init_distributed(config.dist_backend, device=device)
    try:
        return _train(model, objective, data, config, out_dir=Path(out_dir), eval_data=eval_data, env=env,
                      auto_resume=auto_resume, step_callback=step_callback, model_files=model_files,
                      data_check=data_check)
    finally:
        destroy_distributed(env)


def _train(model, objective, data, config: TrainConfig, *, out_dir: Path, eval_data, env: DistEnv,
           auto_resume: bool, step_callback, model_files, data_check) -> TrainState:
    device = env.device
    precision = resolve_precision(config.precision, device)
    loader_bs = getattr(data, "batch_size", None)
    if isinstance(loader_bs, int) and loader_bs != config.batch_size:
        raise InputError(f"the loader's batch_size is {loader_bs} but TrainConfig.batch_size is {config.batch_size}")
    ckpt_dir = out_dir / "checkpoints"
    if env.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    barrier(env)

    seed_all(config.seed + env.rank)
    raw = unwrap(model).to(device)
    optimizer = build_optimizer(raw, config)
    state = TrainState()
    ckpt = resume(raw, optimizer, out_dir, env=env) if auto_resume else None
    if ckpt is not None:
        t = ckpt.trainer
        state = TrainState(step=ckpt.step, epoch=int(t["epoch"]), batches_in_epoch=int(t["batches_in_epoch"]),
                           samples=int(t.get("samples", 0)), tokens=int(t.get("tokens", 0)), resumed_from=str(ckpt.path))
        if t.get("world_size") != env.world_size:
            log.warning("resume: the checkpoint was written by %s ranks, this run has %d: the data position "
                        "(epoch %d, %d batches per rank) is reused as is, so data order is not reproduced",
                        t.get("world_size"), env.world_size, state.epoch, state.batches_in_epoch)
        old = t.get("config", {})
        changed = {k: (old.get(k), v) for k, v in config.to_dict().items() if k in old and old[k] != v}
        if changed:
            log.warning("resume: TrainConfig differs from the checkpoint's: %s", changed)

    best = (BestWeights(out_dir / "best", env, ckpt.trainer.get("best") if ckpt is not None else None)
            if config.keep_best else None)
    barrier(env)  # rank 0 has removed best weights of steps this run repeats
    wrapped = wrap_ddp(raw, env, find_unused_parameters=config.find_unused_parameters)
    if config.compile:
        wrapped = torch.compile(wrapped)

    metrics_csv = MetricsCSV(out_dir / "metrics.csv", state.step if ckpt else None) if env.is_main else None
    eval_csv = (MetricsCSV(out_dir / "eval_metrics.csv", state.step if ckpt else None)
                if env.is_main and eval_data is not None else None)
    tb = tensorboard_writer(out_dir / "tensorboard") if env.is_main else None

    stream = BatchStream(data, state, device)
    if ckpt is not None:
        stream.restore(state.epoch, state.batches_in_epoch, rank_rng(ckpt.rng, env.rank, "epoch_start"),
                       rank_rng(ckpt.rng, env.rank, "now"))
    # From here on nothing may draw random numbers outside the steps (determinism after resume).

    from ..runlog import progress as _bar

    bar = _bar(total=config.max_steps, initial=state.step, disable=not (env.is_main and config.progress),
               desc="train", dynamic_ncols=True)
    log.info("training %s for %d steps (from step %d) on %s, %s, %d rank(s), global batch %d",
             type(raw).__name__, config.max_steps, state.step, device, precision, env.world_size,
             config.batch_size * config.grad_accum * env.world_size)

    window: dict[str, torch.Tensor | float] = {}  # sums since the last log row; tensors on the device
    # on a GPU each row also gives the peak memory since the previous row and a lower bound of the MFU
    n_params = sum(p.numel() for p in raw.parameters())
    peak = peak_flops(torch.cuda.get_device_name(device), precision) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    last_eval = -1
    window_steps, window_tokens, window_t0 = 0, 0, time.perf_counter()

    def _checkpoint() -> None:
        rng = all_gather_tensors(stream.rng_tensors(), env)
        if env.is_main:
            flat = {f"rank{r}.{k}": v for r, d in enumerate(rng) for k, v in d.items()}
            trainer_state = {"step": state.step, "epoch": state.epoch, "batches_in_epoch": state.batches_in_epoch,
                             "samples": state.samples, "tokens": state.tokens, "world_size": env.world_size,
                             "config": config.to_dict(), "best": best.record() if best is not None else None,
                             "schedule": {"kind": "linear_warmup_cosine", "lr": config.lr,
                                          "warmup_steps": config.warmup_steps, "max_steps": config.max_steps,
                                          "min_lr_ratio": config.min_lr_ratio,
                                          "next_lr": lr_at(state.step, config)}}
            path = save_checkpoint(ckpt_dir / checkpoint_name(state.step), raw, optimizer,
                                   trainer_state=trainer_state, rng_states=flat)
            removed = prune_checkpoints(ckpt_dir, config.keep_checkpoints)
            log.info("checkpoint %s written%s", path,
                     f" (removed {', '.join(p.name for p in removed)})" if removed else "")
        barrier(env)

    def _evaluate() -> None:
        nonlocal last_eval
        last_eval = state.step
        result = evaluate(raw, objective, eval_data, device=device, precision=config.precision,
                          max_batches=config.eval_batches, env=env)
        if best is not None:
            best.offer(state.step, result["loss"], raw)
        if env.is_main:
            eval_csv.write({"step": state.step, **result})
            if tb is not None:
                for k, v in result.items():
                    tb.add_scalar(f"eval/{k}", v, state.step)
            log.info("step %d eval: %s", state.step, ", ".join(f"{k}={v:.4g}" for k, v in result.items()))

    try:
        while state.step < config.max_steps:
            # grad_accum loader items, each a batch or a list of passes (data_collate.TokenBudget)
            batches = micro_batches([stream.next() for _ in range(config.grad_accum)])
            counts = [batch_counts(b) for b in batches]
            # no read from the device here: the step's values are summed there and read once per log row
            result = train_step(wrapped, objective, batches, optimizer=optimizer, config=config, step=state.step,
                                device=device, read=False)
            state.step += 1
            rows, tokens = sum(c[0] for c in counts), sum(c[1] for c in counts)
            for k, v in result.items():
                _add_metric(window, k, v, device)
            window_steps += 1
            window_tokens += tokens
            state.samples += rows * env.world_size  # approximate; exact totals are all-reduced at log time
            state.tokens += tokens * env.world_size
            bar.update(1)

            if state.step % config.log_every == 0 or state.step == config.max_steps:
                read_values(window)
                if window.get("skipped"):
                    log.warning("steps %d-%d: %d of the %d updates were skipped (non-finite gradient norm)",
                                state.step - window_steps + 1, state.step, round(window["skipped"]), window_steps)
                keys = sorted(k for k in window if k not in ("lr", "grad_norm"))
                vec = torch.tensor([window[k] / window_steps for k in keys] + [float(window_tokens)], dtype=torch.float64)
                reduced = all_reduce_mean(vec, env).tolist()
                elapsed = max(time.perf_counter() - window_t0, 1e-9)
                row = {"step": state.step, "epoch": state.epoch, "loss": reduced[keys.index("loss")],
                       "lr": result["lr"], "grad_norm": window["grad_norm"] / window_steps,
                       "tokens_per_s": reduced[-1] * env.world_size / elapsed,
                       "samples": state.samples, "tokens": state.tokens}
                row.update({k: reduced[i] for i, k in enumerate(keys) if k not in row})
                if device.type == "cuda":
                    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30  # this rank's
                    torch.cuda.reset_peak_memory_stats(device)
                    if peak is not None:
                        row["mfu"] = model_flops_utilisation(n_params, row["tokens_per_s"], peak, env.world_size)
                state.last_metrics = row
                if env.is_main:
                    metrics_csv.write(row)
                    if tb is not None:
                        for k, v in row.items():
                            if k != "step":
                                tb.add_scalar(f"train/{k}", v, state.step)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    log.info("step %d: loss %.4f, lr %.3e, grad_norm %.3f, %.0f tokens/s", state.step, row["loss"],
                             row["lr"], row["grad_norm"], row["tokens_per_s"])
                window, window_steps, window_tokens, window_t0 = {}, 0, 0, time.perf_counter()

            if eval_data is not None and config.eval_every and state.step % config.eval_every == 0:
                _evaluate()
            if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
                _checkpoint()
            if data_check is not None:
                data_check(False)
            if step_callback is not None:
                step_callback(state)
    finally:
        bar.close()
        if tb is not None:
            tb.close()

    if data_check is not None:
        _final_data_check(data_check, env)
    if eval_data is not None and last_eval != state.step:
        _evaluate()
    if ckpt is not None and ckpt.step >= config.max_steps:
        log.info("the newest checkpoint is already at step %d (max_steps %d): nothing to train",
                 ckpt.step, config.max_steps)
    if best is not None and best.step is not None:
        barrier(env)  # rank 0 has written the file
        if best.step != state.step:
            best.load_into(raw)
        log.info("keep_best: the exported weights are those of step %d of %d (lowest eval loss %.6g)",
                 best.step, state.step, best.loss)
        state.best_step, state.best_eval_loss = best.step, best.loss
    if env.is_main:
        export_model(raw, out_dir / "model", extra_files=model_files)
        if (out_dir / "metrics.csv").is_file() and metrics_csv.rows:
            plot_loss_curve(out_dir / "metrics.csv", out_dir / "loss_curve.png")
        _write_provenance(out_dir / "provenance.json",
                          {"train": config.to_dict(), "model": getattr(getattr(raw, "config", None), "to_dict", lambda: None)(),
                           "model_class": f"{type(raw).__module__}.{type(raw).__qualname__}",
                           "world_size": env.world_size, "device": str(device), "precision": precision,
                           "final_step": state.step, "resumed_from": state.resumed_from,
                           "exported_step": state.best_step if state.best_step is not None else state.step})
        log.info("training finished at step %d: model in %s", state.step, out_dir / "model")
    barrier(env)
    return state

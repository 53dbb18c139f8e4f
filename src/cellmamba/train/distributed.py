"""torch.distributed set-up for data-parallel training.

Launch with ``torchrun --nproc_per_node N ...`` (one node) or ``srun torchrun --nnodes ...
--rdzv_backend c10d`` (several nodes): :func:`init_distributed` reads RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT from the environment (``init_method="env://"``).
Without those variables it runs as a single process and never initialises a process group.
Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError

__all__ = ["DistEnv", "init_distributed", "destroy_distributed", "wrap_ddp", "unwrap", "all_reduce_mean",
           "broadcast_int", "barrier", "all_gather_tensors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``, and whether it set
    up the process group itself (then :func:`destroy_distributed` tears it down)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None when single-process
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "auto", *, device: str | torch.device | None = None) -> DistEnv:
    """Initialise the process group from torchrun's environment variables, if present.

    Parameters
    ----------
    backend
        "auto" (nccl when the device is CUDA, gloo otherwise), "nccl" or "gloo".
    device
        Override of the device; default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Returns
    -------
    DistEnv
        Single-process (rank 0 of 1) when WORLD_SIZE is unset or 1 and no group is initialised.
    """
    if backend not in ("auto", "nccl", "gloo"):
        raise InputError(f"distributed backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise InputError("distributed backend 'nccl' needs a CUDA device; use 'gloo' (or 'auto') on CPU")

    if dist.is_available() and dist.is_initialized():  # set up by the caller (e.g. a test harness)
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(), False)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return DistEnv(0, 1, 0, device, None, False)
    if not dist.is_available():
        raise InputError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise InputError(f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun")
    dist.init_process_group(backend=backend, init_method="env://",
                            **({"device_id": device} if backend == "nccl" else {}))
    env = DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, True)
    log.info("distributed: rank %d of %d, backend %s, device %s", env.rank, env.world_size, backend, device)
    return env


def destroy_distributed(env: DistEnv) -> None:
    """Tear down the process group if :func:`init_distributed` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _DDP(DistributedDataParallel):
    """DDP whose attribute look-ups fall back to the wrapped module, so objectives can write
    ``model.heads["value"]`` or ``model.config`` whether or not the model is wrapped."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_ddp(model: nn.Module, env: DistEnv, *, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``model`` (already on ``env.device``) in DistributedDataParallel when distributed.

    Parameters the objective uses outside ``model.forward`` (e.g. heads applied to the
    backbone output) still get their gradients all-reduced, as long as every parameter
    receives a gradient each step; otherwise pass ``find_unused_parameters=True`` and apply
    those parameters inside ``forward``.
    """
    if not env.distributed:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return _DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The raw module under DDP and/or torch.compile wrappers (what checkpoints save)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if env.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of ``values`` (any shape, float) over ranks; returned on the CPU, as float64."""
    values = values.detach().to(torch.float64)
    if not env.distributed:
        return values.cpu()
    buf = values.to(_comm_device(env))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / env.world_size).cpu()


def broadcast_int(value: int, env: DistEnv) -> int:
    """Rank 0's ``value`` on every rank."""
    if not env.distributed:
        return value
    buf = torch.tensor([value], dtype=torch.int64, device=_comm_device(env))
    dist.broadcast(buf, src=0)
    return int(buf.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.backend == "nccl":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def all_gather_tensors(tensors: dict[str, torch.Tensor], env: DistEnv) -> list[dict[str, torch.Tensor]]:
    """Every rank's ``tensors`` (same keys, shapes and dtypes on all ranks), on the CPU, by rank."""
    if not env.distributed:
        return [{k: v.cpu() for k, v in tensors.items()}]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(env.world_size)]
    dev = _comm_device(env)
    for key in sorted(tensors):
        t = tensors[key].to(dev).contiguous()
        bufs = [torch.empty_like(t) for _ in range(env.world_size)]
        dist.all_gather(bufs, t)
        for r, b in enumerate(bufs):
            out[r][key] = b.cpu()
    return out

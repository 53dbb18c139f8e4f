"""The training data as the loop consumes it: an endless, resumable stream of micro-batches over
epochs (:class:`BatchStream`), and the per-batch helpers (device transfer, row and token counts)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..errors import InputError
from ..models.packing import Packing
from .checkpoint import capture_rng, restore_rng

if TYPE_CHECKING:
    from .loop import TrainState

__all__ = ["BatchStream", "batch_counts", "batch_rows", "rank_rng", "to_device", "micro_batches"]

log = logging.getLogger(__name__)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors (and its packing plan) moved to ``device`` (non-blocking); other
    values as they are."""
    if not isinstance(batch, Mapping):
        raise InputError(f"training batches must be dicts of tensors, got {type(batch).__name__}")
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) or isinstance(v, Packing) else v
            for k, v in batch.items()}


def batch_rows(batch: Mapping[str, Any]) -> int:
    """The rows (cells) of a batch, from shapes alone (no read of the device): the leading
    dimension of input_ids, else of attention_mask, else of the first tensor with one; 0 if none."""
    mask = batch.get("attention_mask")
    first = next((v for v in batch.values() if torch.is_tensor(v) and v.ndim >= 1), None)
    lead = next((v for v in (batch.get("input_ids"), mask) if torch.is_tensor(v) and v.ndim >= 1), first)
    return int(lead.shape[0]) if lead is not None else 0


def micro_batches(items: list) -> list[Mapping[str, Any]]:
    """The micro-batches of one optimizer step from what the loader gave: a batch dict, or a list
    of them (the passes of :class:`~cellmamba.train.data_collate.TokenBudget`), per item."""
    return [b for item in items for b in (item if isinstance(item, list) else [item])]


def batch_counts(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, tokens) of a batch: rows (cells) = the leading dimension of input_ids, else of
    attention_mask, else of the first tensor with one (0 when the batch holds no tensor); tokens =
    attention_mask.sum() when present, else the numel of input_ids (or of the first 2-d tensor)."""
    rows, tokens = batch_rows(batch), 0
    mask = batch.get("attention_mask")
    first = next((v for v in batch.values() if torch.is_tensor(v) and v.ndim >= 1), None)
    if torch.is_tensor(mask):
        tokens = int(mask.sum())
    elif torch.is_tensor(batch.get("input_ids")):
        tokens = batch["input_ids"].numel()
    elif first is not None:
        tokens = int(first.shape[0] * (first.shape[1] if first.ndim > 1 else 1))
    return rows, tokens


def _epoch_hooks(data: Any) -> list:
    """Objects of a loader that take ``set_epoch`` (its sampler, batch sampler, dataset)."""
    found, seen = [], set()
    for obj in (getattr(data, "sampler", None), getattr(data, "batch_sampler", None),
                getattr(getattr(data, "batch_sampler", None), "sampler", None), getattr(data, "dataset", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            found.append(obj)
    return found


class BatchStream:
    """An endless stream of micro-batches over epochs, with a resumable position.

    ``data`` is a re-iterable loader (its sampler's / batch sampler's / dataset's ``set_epoch``
    is called at each epoch) or a factory ``data(epoch) -> iterable``. Resuming at (epoch e, k
    batches consumed) makes the data order identical to the uninterrupted run's: the global RNG
    states captured just before epoch e's iterator was created are restored, the iterator is
    re-created (so a RandomSampler, DataLoader worker seeds or a random collator draw the same
    numbers), k batches are drawn and dropped, and finally the RNG states of the checkpoint
    itself are restored. Skipping reads the k batches (cost: up to one epoch of loading).
    """

    def __init__(self, data: Any, state: TrainState, device: torch.device):
        self.factory = data if (callable(data) and not hasattr(data, "__iter__")) else None
        self.data = data
        self.state = state
        self.device = device
        self.iterator = None
        self.epoch_start_rng: dict[str, torch.Tensor] | None = None
        self.hooks = [] if self.factory else _epoch_hooks(data)
        if self.factory is None and not self.hooks:
            log.warning("the data loader has no sampler/dataset with set_epoch: every epoch uses the loader's own "
                        "order, and resuming reproduces it only if iterating the loader is deterministic")

    def _open(self, epoch: int):
        for obj in self.hooks:
            obj.set_epoch(epoch)
        self.iterator = iter(self.factory(epoch) if self.factory else self.data)

    def _start_epoch(self, epoch: int) -> None:
        self.epoch_start_rng = capture_rng(self.device)
        self.state.epoch, self.state.batches_in_epoch = epoch, 0
        self._open(epoch)

    def next(self) -> Mapping[str, Any]:
        if self.iterator is None:
            self._start_epoch(self.state.epoch)
        for attempt in range(2):
            try:
                batch = next(self.iterator)
            except StopIteration:
                if attempt == 1 or self.state.batches_in_epoch == 0:
                    raise InputError(f"the training data yielded no batches in epoch {self.state.epoch}") from None
                self._start_epoch(self.state.epoch + 1)
                continue
            self.state.batches_in_epoch += 1
            return batch
        raise AssertionError("unreachable")  # pragma: no cover

    def restore(self, epoch: int, batches: int, epoch_start_rng: dict | None, rng_now: dict | None) -> None:
        """Re-open epoch ``epoch`` and drop ``batches`` batches, then restore ``rng_now``."""
        self.state.epoch, self.state.batches_in_epoch = epoch, 0
        if batches > 0:
            if epoch_start_rng is not None:
                restore_rng(epoch_start_rng, self.device)
            self.epoch_start_rng = epoch_start_rng
            self._open(epoch)
            for i in range(batches):
                try:
                    next(self.iterator)
                except StopIteration:
                    raise InputError(f"resume: epoch {epoch} has only {i} batches, the checkpoint consumed {batches} "
                                     "(different data or batch size?)") from None
            self.state.batches_in_epoch = batches
            log.info("resume: skipped %d batches already consumed in epoch %d", batches, epoch)
        if rng_now is not None:
            restore_rng(rng_now, self.device)

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"now.{k}": v for k, v in capture_rng(self.device).items()}
        if self.epoch_start_rng is not None:
            out.update({f"epoch_start.{k}": v for k, v in self.epoch_start_rng.items()})
        return out


def rank_rng(rng: dict[str, torch.Tensor], rank: int, when: str) -> dict[str, torch.Tensor] | None:
    """Rank ``rank``'s RNG states of a checkpoint taken at ``when`` ("now" or "epoch_start"); None if absent."""
    prefix = f"rank{rank}.{when}."
    found = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
    return found or None

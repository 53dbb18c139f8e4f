"""Packed variable-length batches: several cells in one row, so the backbone computes no padding.

A right-padded batch (batch, seq_len) of cells with lengths ``l_b`` is packed into ``n_rows``
rows of ``row_len`` tokens: each cell is placed whole (first-fit decreasing: longest cells first,
each into the first row with room), the rest of a row is empty. The backbone runs on the packed
rows and puts its states back in the padded layout (:meth:`Packing.unpack`), so embeddings,
heads, pooling and losses see the same tensors as without packing.

What keeps cells apart inside a row (:class:`~cellmamba.models.backbone.Backbone`):
- ``seq_idx`` (n_rows, row_len) int32: each position's cell within its row (0, 1, ...), the empty
  tail its own index after them. Mamba2's conv and SSD reset at every change (mamba_ssm's
  ``seq_idx``; the reference path in :mod:`._ref` computes the same function); the Transformer
  attends within a cell only.
- ``rev`` (n_rows, row_len) int64: the reverse direction of a BiMamba reverses each cell in place
  (position p of cell [s, e) reads position s + e - 1 - p), so a packed row's reverse scan is
  each cell's reverse scan.

The plan is made on the host from lengths the collator already knows (:func:`plan_packing`), so
packing needs no device synchronisation; :meth:`Packing.to` moves it with the batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError

__all__ = ["Packing", "plan_packing", "reversal_index"]


@dataclass(frozen=True)
class Packing:
    """Where each real token of a padded batch sits in the packed rows.

    ``src`` / ``dst``: int64 (n_tokens,), the real tokens' flat positions in the packed
    (n_rows * row_len) and in the padded (batch * seq_len) layout, cell by cell in token order;
    ``seq_idx``, ``rev``: see the module docstring; ``mask``: bool (n_rows, row_len), True at real
    tokens; ``lengths``: int64 (batch,); ``seq_len``: the padded layout's length.
    """

    src: torch.Tensor
    dst: torch.Tensor
    seq_idx: torch.Tensor
    rev: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    seq_len: int

    @property
    def batch(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.seq_idx.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.seq_idx.shape[1])

    def _map(self, fn) -> "Packing":
        """The plan with ``fn`` applied to each of its tensors."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device, *, non_blocking: bool = False) -> "Packing":
        """The plan on ``device`` (pinned host tensors copy asynchronously with ``non_blocking``)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Packing":
        """Page-locked copies (the DataLoader's pin_memory thread calls this)."""
        return self._map(torch.Tensor.pin_memory)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, seq_len, ...) -> (n_rows, row_len, ...): the real tokens moved, zeros elsewhere."""
        if tuple(x.shape[:2]) != (self.batch, self.seq_len):
            raise InputError(f"Packing.pack: expected a (batch={self.batch}, seq_len={self.seq_len}, ...) input, "
                             f"got {tuple(x.shape)}")
        rest = x.shape[2:]
        flat = x.reshape(self.batch * self.seq_len, *rest).index_select(0, self.dst)
        out = x.new_zeros(self.n_rows * self.row_len, *rest).index_copy(0, self.src, flat)
        return out.view(self.n_rows, self.row_len, *rest)

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """(n_rows, row_len, ...) -> (batch, seq_len, ...): inverse of :meth:`pack` (zeros at padding)."""
        rest = y.shape[2:]
        flat = y.reshape(self.n_rows * self.row_len, *rest).index_select(0, self.src)
        out = y.new_zeros(self.batch * self.seq_len, *rest).index_copy(0, self.dst, flat)
        return out.view(self.batch, self.seq_len, *rest)


def reversal_index(starts_per_row, row_len: int) -> np.ndarray:
    """int64 (n_rows, row_len): position p of segment [s, e) reads s + e - 1 - p.

    ``starts_per_row``: per row, the ascending start positions of its segments (the first 0);
    each segment runs to the next start (the last to ``row_len``)."""
    out = np.empty((len(starts_per_row), row_len), dtype=np.int64)
    for r, starts in enumerate(starts_per_row):
        bounds = list(starts) + [row_len]
        for s, e in zip(bounds[:-1], bounds[1:]):
            out[r, s:e] = np.arange(e - 1, s - 1, -1)
    return out


def plan_packing(lengths, row_len: int | None = None, *, seq_len: int | None = None) -> Packing:
    """Pack cells of these lengths into rows of ``row_len`` tokens (first-fit decreasing).

    Parameters
    ----------
    lengths
        (batch,) real tokens per cell (right-padded rows of the padded batch).
    row_len
        Tokens per packed row; default the longest cell (so no row is longer than the padded
        batch). Must be >= every length.
    seq_len
        The padded batch's length (default the longest cell).

    Returns
    -------
    :class:`Packing` on the CPU.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lengths.size and lengths.min() < 0:
        raise InputError(f"plan_packing: lengths must be >= 0, got {lengths.min()}")
    longest = int(lengths.max(initial=0))
    seq_len = longest if seq_len is None else int(seq_len)
    row_len = max(longest, 1) if row_len is None else int(row_len)
    if longest > seq_len:
        raise InputError(f"plan_packing: a cell of {longest} tokens does not fit the padded length {seq_len}")
    if longest > row_len:
        raise InputError(f"plan_packing: a cell of {longest} tokens does not fit a row of {row_len}")
    # first-fit decreasing (stable: equal lengths keep batch order); empty cells take no room
    order = np.argsort(-lengths, kind="stable")
    free: list[int] = []
    rows: list[list[int]] = []
    for b in order:
        if lengths[b] == 0:
            continue
        for r, room in enumerate(free):
            if room >= lengths[b]:
                rows[r].append(int(b))
                free[r] -= int(lengths[b])
                break
        else:
            rows.append([int(b)])
            free.append(row_len - int(lengths[b]))
    if not rows:  # nothing real: one empty row keeps the shapes valid
        rows, free = [[]], [row_len]
    n_rows = len(rows)
    seq_idx = np.empty((n_rows, row_len), dtype=np.int32)
    src, dst, starts_per_row = [], [], []
    for r, cells in enumerate(rows):
        pos, starts = 0, []
        for k, b in enumerate(cells):
            n = int(lengths[b])
            starts.append(pos)
            seq_idx[r, pos:pos + n] = k
            src.append(r * row_len + pos + np.arange(n))
            dst.append(b * seq_len + np.arange(n))
            pos += n
        if pos < row_len or not starts:
            starts.append(pos)
            seq_idx[r, pos:] = len(cells)
        starts_per_row.append(starts)
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    mask = np.zeros(n_rows * row_len, dtype=bool)
    mask[src] = True
    return Packing(src=torch.from_numpy(src.astype(np.int64)), dst=torch.from_numpy(dst.astype(np.int64)),
                   seq_idx=torch.from_numpy(seq_idx), rev=torch.from_numpy(reversal_index(starts_per_row, row_len)),
                   mask=torch.from_numpy(mask.reshape(n_rows, row_len)), lengths=torch.from_numpy(lengths.copy()),
                   seq_len=seq_len)

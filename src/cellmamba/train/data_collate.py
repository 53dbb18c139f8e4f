"""Collators: lists of :class:`~cellmamba.train.data.TokenDataset` items -> the training batch
dict of docs/architecture.md ("Training batches"), right-padded with ``<pad>`` = 0.

| collator | recipe | keys |
|---|---|---|
| :class:`MaskedValueCollator` | scmamba2 (binned) | input_ids, attention_mask, values, value_mask, value_targets, dataset, cell_index |
| :class:`MaskedGeneCollator` | genemamba, option a (rank) | input_ids (``<mask>`` where hidden), attention_mask, labels, dataset, cell_index |
| :class:`NextTokenCollator` | genemamba, option b (rank) | input_ids, attention_mask, labels, dataset, cell_index |
| :class:`PatchCollator` | scmamba (patch) | values (B, n_patches, patch_size), attention_mask, dataset, cell_index |

Randomness. Every random choice about a cell (which positions are masked, which zeros are
added, BERT replacements) comes from its own ``numpy`` generator seeded with
``(seed, epoch, rank, cell_index, stream)``. A batch is therefore identical whatever the
batch composition, the number of DataLoader workers or the order they run in; a new epoch
(:meth:`set_epoch`) or another rank draws new masks.

Mask count (both masked objectives): a cell with ``n`` eligible positions gets exactly
``k = min(n, max(1, floor(mask_ratio * n + 0.5)))`` masked positions (round half up, at least
one so every non-empty cell carries a target), ``k = 0`` when ``n = 0`` or ``mask_ratio = 0``.
Eligible: real positions that hold a gene (``token >= N_SPECIAL``), so ``<cls>`` and padding
are never masked; added zeros are eligible (the model learns to predict "not expressed").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..models.packing import plan_packing
from ..tokenize.patch import to_patches
from ..vocab import MASK_ID, N_SPECIAL, PAD_ID

__all__ = ["MaskedValueCollateConfig", "MaskedGeneCollateConfig", "MaskedValueCollator", "MaskedGeneCollator",
           "NextTokenCollator", "PatchCollator", "TokenBudget", "mask_count", "IGNORE_INDEX", "HIDDEN_VALUE"]

IGNORE_INDEX = -100   # labels value ignored by the loss (torch cross_entropy's default)
HIDDEN_VALUE = -1     # ``values`` at value_mask positions: never a valid bin, so a model that
                      # forgets value_mask fails loudly instead of reading the answer
ZEROS_ORDERS = ("sorted", "append")

# stream numbers of the per-cell generators (one generator per cell and collator call)
_STREAM_VALUE, _STREAM_GENE = 11, 12


def _check_ratio(owner: str, name: str, value, *, upper_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    if not ok or (upper_open and value >= 1.0):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise InputError(f"{owner}: {name} must be a number in {bound}, got {value!r}")


def _check_int(owner: str, name: str, value, *, low: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise InputError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")


def mask_count(n: int, mask_ratio: float) -> int:
    """Number of positions masked among ``n`` eligible ones (module docstring's rule)."""
    if n <= 0 or mask_ratio <= 0:
        return 0
    return int(min(n, max(1, np.floor(mask_ratio * n + 0.5))))


def _cell_rng(seed: int, epoch: int, rank: int, cell: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(rank), int(cell), stream])


@dataclass(frozen=True)
class MaskedValueCollateConfig:
    """Masked expression-value prediction on binned tokens (SC-MAMBA2 / scGPT)."""

    mask_ratio: float = 0.15      # fraction of a cell's gene positions whose value is hidden
    zeros_ratio: float = 0.0      # unexpressed measured genes added per cell, as a fraction of its expressed genes
    n_zeros: int = 0              # or a fixed number added per cell (at most one of the two is > 0)
    max_len: int | None = None    # tokens per cell after adding zeros (None: no cap); zeros are cut, never genes
    zeros_order: str = "sorted"   # "sorted": merged into the stored ascending gene order; "append": after the genes

    def __post_init__(self):
        name = "MaskedValueCollateConfig"
        _check_ratio(name, "mask_ratio", self.mask_ratio)
        if not (isinstance(self.zeros_ratio, (int, float)) and not isinstance(self.zeros_ratio, bool)
                and 0.0 <= self.zeros_ratio):
            raise InputError(f"{name}: zeros_ratio must be a number >= 0, got {self.zeros_ratio!r}")
        _check_int(name, "n_zeros", self.n_zeros)
        if self.zeros_ratio > 0 and self.n_zeros > 0:
            raise InputError(f"{name}: set zeros_ratio ({self.zeros_ratio}) or n_zeros ({self.n_zeros}), not both")
        if self.max_len is not None:
            _check_int(name, "max_len", self.max_len, low=2)
        if self.zeros_order not in ZEROS_ORDERS:
            raise InputError(f"{name}: zeros_order must be one of {ZEROS_ORDERS}, got {self.zeros_order!r}")

    @property
    def adds_zeros(self) -> bool:
        return self.zeros_ratio > 0 or self.n_zeros > 0


@dataclass(frozen=True)
class MaskedGeneCollateConfig:
    """Masked-gene prediction on rank tokens (GeneMamba, option a).

    Of the ``k`` masked positions, ``round(random_ratio * k)`` get a uniformly random gene
    token and ``round(keep_ratio * k)`` keep their token (BERT's 80/10/10 is
    ``random_ratio=0.1, keep_ratio=0.1``); the rest get ``<mask>``. Default: all ``<mask>``
    (no input corruption the model could mistake for data; our choice, not a paper's).
    """

    mask_ratio: float = 0.15   # fraction of a cell's gene positions to predict
    random_ratio: float = 0.0  # of the masked positions: replaced by a random gene token (BERT: 0.1)
    keep_ratio: float = 0.0    # of the masked positions: left unchanged (BERT: 0.1)

    def __post_init__(self):
        name = "MaskedGeneCollateConfig"
        _check_ratio(name, "mask_ratio", self.mask_ratio)
        _check_ratio(name, "random_ratio", self.random_ratio)
        _check_ratio(name, "keep_ratio", self.keep_ratio)
        if self.random_ratio + self.keep_ratio > 1.0:
            raise InputError(f"{name}: random_ratio + keep_ratio must be <= 1, got "
                             f"{self.random_ratio} + {self.keep_ratio}")


def padded_length(longest: int, multiple: int, cap: int | None = None) -> int:
    """A batch's length: its longest row rounded up to ``multiple``, but not beyond ``cap``
    (the model's longest input) unless the row itself is longer; at least 1."""
    n = -(-int(longest) // multiple) * multiple
    if cap is not None:
        n = max(int(longest), min(n, cap))
    return max(1, n)


class _Collator:
    """Shared state: ``seed`` and ``rank`` (fixed), ``epoch`` (:meth:`set_epoch`), padding, and
    ``pack``: add the batch's packing plan (``batch["packing"]``, a
    :class:`~cellmamba.models.packing.Packing` of rows as long as the padded batch), made here on
    the host (in a loader worker) so the model needs no device synchronisation for it."""

    def __init__(self, *, seed: int = 0, rank: int = 0, pad_to_multiple: int = 1, pack: bool = False,
                 max_padded: int | None = None):
        name = type(self).__name__
        _check_int(name, "seed", seed)
        _check_int(name, "rank", rank)
        _check_int(name, "pad_to_multiple", pad_to_multiple, low=1)
        if max_padded is not None:
            _check_int(name, "max_padded", max_padded, low=1)
        if not isinstance(pack, bool):
            raise InputError(f"{name}: pack must be true or false, got {pack!r}")
        self.seed, self.rank, self.pad_to_multiple, self.pack = int(seed), int(rank), int(pad_to_multiple), pack
        # the longest batch the model takes (e.g. its learned positions): rounding up to
        # pad_to_multiple stops there, so a 10,000-token context never pads to 10,048
        self.max_padded = None if max_padded is None else int(max_padded)
        self.epoch = 0

    def _finish(self, batch: dict) -> dict:
        """The batch, with ``padded`` (a bool: whether any cell is shorter than the batch, known
        here on the host so the model need not ask the device: ``CellModel.forward(padded=)``) and
        its packing plan where ``pack``."""
        attn = batch["attention_mask"]
        batch["padded"] = not bool(attn.all())
        if self.pack:
            batch["packing"] = plan_packing(attn.sum(1).numpy(), attn.shape[1], seq_len=attn.shape[1])
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Draw new masks: the per-cell generators are keyed by the epoch."""
        _check_int(type(self).__name__, "epoch", epoch)
        self.epoch = int(epoch)

    def _padded_len(self, lengths) -> int:
        return padded_length(max(lengths, default=0), self.pad_to_multiple, self.max_padded)

    def _check_items(self, items) -> None:
        if len(items) == 0:
            raise InputError(f"{type(self).__name__}: got an empty batch")

    @staticmethod
    def _provenance(items) -> dict[str, torch.Tensor]:
        return {"dataset": torch.tensor([int(it["dataset"]) for it in items], dtype=torch.int64),
                "cell_index": torch.tensor([int(it["cell_index"]) for it in items], dtype=torch.int64)}

    def _ids_and_mask(self, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        B, L = len(rows), self._padded_len([r.shape[0] for r in rows])
        ids = np.full((B, L), PAD_ID, dtype=np.int64)
        attn = np.zeros((B, L), dtype=bool)
        for b, r in enumerate(rows):
            ids[b, :r.shape[0]] = r
            attn[b, :r.shape[0]] = True
        return ids, attn


class MaskedValueCollator(_Collator):
    """Binned cells -> a masked-value batch (scmamba2).

    Per cell, with its own generator (module docstring):

    1. Zeros (optional, scGPT-style): ``n_zeros``, or ``floor(zeros_ratio * n_expressed + 0.5)``
       (``n_expressed`` = gene tokens of the cropped cell), genes drawn uniformly without
       replacement from the genes the cell's dataset MEASURED minus every gene stored for the
       cell (the whole stored list, not only the cropped part), value 0; capped by
       ``max_len - length`` and by the candidates available. Never an unmeasured gene. Cells
       whose stored list may have been shortened by the tokenizer (``item["complete"]`` False:
       stored length reached the tokenizer's max_len, so expressed genes may be missing from
       disk) get no zeros, because an expressed gene left out could not be told from a zero.
    2. Mask: :func:`mask_count` positions among the gene positions (``<cls>`` never).

    Output (B = cells, L = longest row, rounded up to ``pad_to_multiple``):
    ``input_ids`` int64 (B, L); ``attention_mask`` bool (B, L); ``values`` int64 (B, L): the
    bins, 0 at ``<cls>``, added zeros and padding, ``HIDDEN_VALUE`` (-1) where hidden;
    ``value_mask`` bool (B, L); ``value_targets`` float32 (B, L): the true bin where
    ``value_mask``, 0 elsewhere; ``dataset``, ``cell_index`` int64 (B,).
    """

    def __init__(self, config: MaskedValueCollateConfig = MaskedValueCollateConfig(), *, seed: int = 0, rank: int = 0,
                 pad_to_multiple: int = 1, pack: bool = False, max_padded: int | None = None):
        super().__init__(seed=seed, rank=rank, pad_to_multiple=pad_to_multiple, pack=pack, max_padded=max_padded)
        if not isinstance(config, MaskedValueCollateConfig):
            raise InputError(f"MaskedValueCollator: config must be a MaskedValueCollateConfig, got {type(config).__name__}")
        self.config = config

    def output_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Upper bound of each cell's row length after zeros are added (for the sampler's
        token budget): int64 (n_cells,) from the dataset's cropped ``lengths``."""
        c = self.config
        lengths = np.asarray(lengths, dtype=np.int64)
        if not c.adds_zeros:
            return lengths
        extra = np.full_like(lengths, c.n_zeros) if c.n_zeros else np.floor(
            c.zeros_ratio * np.maximum(lengths - 1, 0) + 0.5).astype(np.int64)
        out = lengths + extra
        return np.minimum(out, np.maximum(lengths, c.max_len)) if c.max_len is not None else out

    def _zeros(self, item, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if not c.adds_zeros or not item.get("complete", False) or item.get("measured") is None:
            return np.zeros(0, dtype=np.int64)
        n_expr = int((tokens >= N_SPECIAL).sum())
        k = c.n_zeros if c.n_zeros else int(np.floor(c.zeros_ratio * n_expr + 0.5))
        if c.max_len is not None:
            k = min(k, c.max_len - tokens.shape[0])
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        candidates = np.array(item["measured"], dtype=bool)  # a copy: the shard's row stays untouched
        stored = np.asarray(item["stored"], dtype=np.int64)
        candidates[stored[stored >= N_SPECIAL] - N_SPECIAL] = False
        pool = np.flatnonzero(candidates)
        k = min(k, pool.shape[0])
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        return rng.choice(pool, size=k, replace=False).astype(np.int64) + N_SPECIAL

    def __call__(self, items) -> dict[str, torch.Tensor]:
        self._check_items(items)
        c = self.config
        rows, vals, masks = [], [], []
        for it in items:
            if it.get("values") is None or np.asarray(it["values"]).dtype.kind != "u":
                raise InputError(f"MaskedValueCollator: cell {it.get('cell_index')} has no bin values "
                                 f"(values {None if it.get('values') is None else np.asarray(it['values']).dtype}); "
                                 f"it needs a binned corpus")
            rng = _cell_rng(self.seed, self.epoch, self.rank, it["cell_index"], _STREAM_VALUE)
            tok = np.asarray(it["tokens"], dtype=np.int64)
            val = np.asarray(it["values"], dtype=np.int64)
            z = self._zeros(it, tok, rng)
            if z.shape[0]:
                tok = np.concatenate([tok, z])
                val = np.concatenate([val, np.zeros(z.shape[0], dtype=np.int64)])
                if c.zeros_order == "sorted":
                    order = np.argsort(tok, kind="stable")  # <cls> (1) < genes (>= 4): CLS stays first
                    tok, val = tok[order], val[order]
            eligible = np.flatnonzero(tok >= N_SPECIAL)
            k = mask_count(eligible.shape[0], c.mask_ratio)
            m = np.zeros(tok.shape[0], dtype=bool)
            if k:
                m[rng.choice(eligible, size=k, replace=False)] = True
            rows.append(tok)
            vals.append(val)
            masks.append(m)
        ids, attn = self._ids_and_mask(rows)
        values = np.zeros(ids.shape, dtype=np.int64)
        value_mask = np.zeros(ids.shape, dtype=bool)
        for b, (v, m) in enumerate(zip(vals, masks)):
            values[b, :v.shape[0]] = v
            value_mask[b, :m.shape[0]] = m
        targets = np.where(value_mask, values, 0).astype(np.float32)
        values[value_mask] = HIDDEN_VALUE
        return self._finish({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
                             "values": torch.from_numpy(values), "value_mask": torch.from_numpy(value_mask),
                             "value_targets": torch.from_numpy(targets), **self._provenance(items)})


class MaskedGeneCollator(_Collator):
    """Rank cells -> a masked-gene batch (genemamba, option a).

    :func:`mask_count` gene positions per cell are predicted: ``labels`` holds their original
    token id, ``IGNORE_INDEX`` (-100) everywhere else (padding included); ``input_ids`` has
    ``<mask>`` there (or a random gene / the original token, per :class:`MaskedGeneCollateConfig`).

    Parameters
    ----------
    config
        :class:`MaskedGeneCollateConfig`.
    n_genes
        Genes in the vocabulary (``TokenDataset.n_genes``); needed when ``random_ratio > 0``
        (random tokens are drawn from ``N_SPECIAL .. N_SPECIAL + n_genes - 1``).
    seed, rank, pad_to_multiple
        As for every collator (module docstring).

    Returns (of a call)
    -------------------
    ``input_ids`` int64 (B, L), ``attention_mask`` bool (B, L), ``labels`` int64 (B, L),
    ``target_index`` int64 (n_targets,): the flat positions (row-major in (B, L)) where ``labels``
    is not ignored, so the objective selects its targets without a boolean mask (whose size only
    the device knows: a host wait per batch on a GPU); ``dataset``, ``cell_index`` int64 (B,).
    """

    def __init__(self, config: MaskedGeneCollateConfig = MaskedGeneCollateConfig(), *, n_genes: int | None = None, seed: int = 0,
                 rank: int = 0, pad_to_multiple: int = 1, pack: bool = False, max_padded: int | None = None):
        super().__init__(seed=seed, rank=rank, pad_to_multiple=pad_to_multiple, pack=pack, max_padded=max_padded)
        if not isinstance(config, MaskedGeneCollateConfig):
            raise InputError(f"MaskedGeneCollator: config must be a MaskedGeneCollateConfig, got {type(config).__name__}")
        if config.random_ratio > 0:
            if n_genes is None:
                raise InputError("MaskedGeneCollator: random_ratio > 0 needs n_genes= (TokenDataset.n_genes)")
            _check_int("MaskedGeneCollator", "n_genes", n_genes, low=1)
        self.config, self.n_genes = config, n_genes

    def __call__(self, items) -> dict[str, torch.Tensor]:
        self._check_items(items)
        c = self.config
        rows = [np.asarray(it["tokens"], dtype=np.int64) for it in items]
        ids, attn = self._ids_and_mask(rows)
        labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        for b, (it, tok) in enumerate(zip(items, rows)):
            eligible = np.flatnonzero(tok >= N_SPECIAL)
            k = mask_count(eligible.shape[0], c.mask_ratio)
            if not k:
                continue
            rng = _cell_rng(self.seed, self.epoch, self.rank, it["cell_index"], _STREAM_GENE)
            pos = rng.choice(eligible, size=k, replace=False)  # in random order: the split below is random
            labels[b, pos] = tok[pos]
            n_rand = min(k, int(np.floor(c.random_ratio * k + 0.5)))
            n_keep = min(k - n_rand, int(np.floor(c.keep_ratio * k + 0.5)))
            if n_rand:
                ids[b, pos[:n_rand]] = N_SPECIAL + rng.integers(0, self.n_genes, size=n_rand)
            ids[b, pos[n_rand + n_keep:]] = MASK_ID
        return self._finish({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
                             "labels": torch.from_numpy(labels),
                             "target_index": torch.from_numpy(np.flatnonzero(labels != IGNORE_INDEX)),
                             **self._provenance(items)})


class NextTokenCollator(_Collator):
    """Rank cells -> a next-token batch (genemamba, option b): no masking; ``labels`` =
    ``input_ids`` with ``IGNORE_INDEX`` at padding (the objective shifts them per direction).

    Returns (of a call): ``input_ids``, ``labels`` int64 (B, L), ``attention_mask`` bool (B, L),
    ``dataset``, ``cell_index`` int64 (B,).
    """

    def __call__(self, items) -> dict[str, torch.Tensor]:
        self._check_items(items)
        ids, attn = self._ids_and_mask([np.asarray(it["tokens"], dtype=np.int64) for it in items])
        labels = np.where(attn, ids, IGNORE_INDEX)
        return self._finish({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
                             "labels": torch.from_numpy(labels), **self._provenance(items)})


class PatchCollator(_Collator):
    """Patch cells -> dense patches (scmamba), via :func:`~cellmamba.tokenize.to_patches`.

    Parameters
    ----------
    patch_size
        Features per patch (the patch shard's ``settings["patch_size"]``).
    n_features
        Features per cell (``settings["n_features"]``); an item's own ``n_features`` (set by
        :class:`~cellmamba.train.data.TokenDataset`) takes precedence, so cells of corpora
        with different feature counts can share a batch.

    Returns (of a call)
    -------------------
    ``values`` float32 (B, P, patch_size), P = the most patches of any cell (every patch of a
    cell is real; cells with fewer patches are right-padded with zero patches);
    ``attention_mask`` bool (B, P); ``dataset``, ``cell_index`` int64 (B,). No ``input_ids``.
    """

    def __init__(self, *, patch_size: int, n_features: int | None = None, seed: int = 0, rank: int = 0,
                 pad_to_multiple: int = 1):
        super().__init__(seed=seed, rank=rank, pad_to_multiple=pad_to_multiple)
        _check_int("PatchCollator", "patch_size", patch_size, low=1)
        if n_features is not None:
            _check_int("PatchCollator", "n_features", n_features, low=1)
        self.patch_size, self.n_features = int(patch_size), n_features

    def __call__(self, items) -> dict[str, torch.Tensor]:
        self._check_items(items)
        cells = []
        for it in items:
            nf = it.get("n_features", self.n_features)
            if nf is None:
                raise InputError(f"PatchCollator: cell {it.get('cell_index')} has no n_features and the "
                                 f"collator was built without n_features=")
            if it.get("values") is None or np.asarray(it["values"]).dtype.kind != "f":
                raise InputError(f"PatchCollator: cell {it.get('cell_index')} has no float values; it needs a "
                                 f"patch corpus")
            cells.append(to_patches(np.asarray(it["tokens"]), np.asarray(it["values"]), n_features=int(nf),
                                    patch_size=self.patch_size))
        P = self._padded_len([x.shape[0] for x in cells])
        values = np.zeros((len(cells), P, self.patch_size), dtype=np.float32)
        attn = np.zeros((len(cells), P), dtype=bool)
        for b, x in enumerate(cells):
            values[b, :x.shape[0]] = x
            attn[b, :x.shape[0]] = True
        return {"values": torch.from_numpy(values), "attention_mask": torch.from_numpy(attn),
                **self._provenance(items)}


class TokenBudget:
    """A token collator's batch in passes of at most ``max_tokens`` padded tokens: one optimizer
    step's cells, as many per forward / backward pass as the GPU holds whatever their length.

    A fixed number of cells per pass must be set for the longest cells, which leaves passes of
    ordinary cells too small to keep the GPU busy: at paper depth, passes of 2 cells of ~2,000
    tokens ran ~10x below 32 at once (benchmarks/README.md "End to end"). Here the cells are
    taken longest first and a pass grows while (cells + 1) x its padded length (rounded up to the
    collator's ``pad_to_multiple``) stays within ``max_tokens``; a cell longer than the budget
    has a pass of its own. Each pass is the wrapped collator's batch, so every cell's masks and
    zeros are what they would be in any other batch (the collators' per-cell generators).

    Returns (of a call): a list of the collator's batch dicts; the training loop accumulates
    them into one optimizer step, weighted by their cells (:func:`cellmamba.train.loop.train_step`).
    ``set_epoch``, ``output_lengths``, ``rank``, ``seed`` and ``pad_to_multiple`` are the collator's.
    """

    def __init__(self, collator, max_tokens: int):
        _check_int("TokenBudget", "max_tokens", max_tokens, low=1)
        if isinstance(collator, (TokenBudget, PatchCollator)):
            raise InputError(f"TokenBudget: wraps a token collator, got {type(collator).__name__}")
        self.collator, self.max_tokens = collator, int(max_tokens)

    rank = property(lambda self: self.collator.rank)
    seed = property(lambda self: self.collator.seed)
    pad_to_multiple = property(lambda self: self.collator.pad_to_multiple)
    max_padded = property(lambda self: getattr(self.collator, "max_padded", None))

    def set_epoch(self, epoch: int) -> None:
        self.collator.set_epoch(epoch)

    def output_lengths(self, lengths: np.ndarray) -> np.ndarray:
        f = getattr(self.collator, "output_lengths", None)
        return f(lengths) if f is not None else np.asarray(lengths, dtype=np.int64)

    def passes(self, lengths) -> list[list[int]]:
        """The positions of each pass's cells (longest first), for cells of these row lengths."""
        lengths = self.output_lengths(np.asarray(lengths, dtype=np.int64))
        m, cap = self.pad_to_multiple, self.max_padded
        out: list[list[int]] = []
        padded = 0  # the current pass's padded length: its first (longest) cell's, rounded up
        for i in np.argsort(-lengths, kind="stable").tolist():
            if out and (len(out[-1]) + 1) * padded <= self.max_tokens:
                out[-1].append(i)
            else:
                out.append([i])
                padded = padded_length(int(lengths[i]), m, cap)
        return out

    def __call__(self, items) -> list[dict]:
        if len(items) == 0:
            raise InputError("TokenBudget: got an empty batch")
        lengths = [np.asarray(it["tokens"]).shape[0] for it in items]
        return [self.collator([items[i] for i in p]) for p in self.passes(lengths)]

"""Training data over token shards: a memory-mapped Dataset, a distributed length-bucketing
batch sampler, the collators (:mod:`.data_collate`) and a DataLoader that wires them.

``build_dataloader(corpus, collator, DataConfig(...), rank=r, world_size=w)`` gives a
:class:`CellDataLoader`; call ``loader.set_epoch(epoch)`` before each epoch (it reaches the
sampler, the dataset and the collator). Batches are the dict of docs/architecture.md
("Training batches").

Determinism: everything random is a function of ``(seed, epoch, rank)`` and the cell's global
index, never of global RNG state, the number of workers or timing:

- the epoch's cell order: ``default_rng([seed, epoch, 0])`` (identical on every rank, so the
  ranks' shares are disjoint);
- the batch order of rank r: ``default_rng([seed, epoch, r, 1])``;
- a cell's crop (``crop="sample"``): ``default_rng([seed, epoch, cell, 2])``;
- a cell's masks and zeros: see :mod:`.data_collate`.

Crop rule (:class:`TokenDataset`, cells longer than ``max_len``): ``"head"`` keeps the first
``max_len`` stored tokens (rank: the top-ranked genes, as stored; binned: ``<cls>`` + the first
``max_len - 1`` genes in the stored ascending gene order). ``"sample"`` keeps a uniform random
subset of ``max_len`` tokens (binned: ``<cls>`` + ``max_len - 1`` genes), in stored order, new
each epoch (scGPT samples genes the same way). ``"auto"`` (default): rank -> head (the order is
the signal), binned -> sample (head would always keep the lowest gene ids). Patch cells are
never cropped.

Remainder rule (:class:`DistributedBucketSampler`): ``drop_last=True`` (default) drops, at
random (the end of the shuffled order), the ``n % world_size`` cells that do not divide among
ranks and then the cells of each rank's last, partial batch, so every batch of every rank has
``batch_size`` cells; ``drop_last=False`` pads the order by wrapping around (a few cells twice,
as torch's DistributedSampler does) and keeps a partial last batch. With ``max_tokens`` the
batch count can differ between ranks; it is equalised (drop_last: every rank keeps the minimum
count, dropping its last batches after the shuffle; else: ranks repeat their first batches up
to the maximum) so no rank waits at a collective for a batch that never comes.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numba import njit
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError
from ..tokenize.shards import TokenCorpus
from ..vocab import CLS_ID
from .data_collate import (HIDDEN_VALUE, IGNORE_INDEX, MaskedGeneCollator, MaskedGeneCollateConfig, MaskedValueCollator,
                           MaskedValueCollateConfig, NextTokenCollator, PatchCollator, mask_count)

__all__ = [
    "DataConfig", "TokenDataset", "DistributedBucketSampler", "CellDataLoader", "build_dataloader",
    "MaskedValueCollateConfig", "MaskedGeneCollateConfig", "MaskedValueCollator", "MaskedGeneCollator", "NextTokenCollator",
    "PatchCollator", "mask_count", "IGNORE_INDEX", "HIDDEN_VALUE", "CROPS",
]

CROPS = ("auto", "head", "sample")
_STREAM_ORDER, _STREAM_BATCHES, _STREAM_CROP = 0, 1, 2


def _check_int(owner: str, name: str, value, *, low: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise InputError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Settings of the training data pipeline (dataset crop, sampler, DataLoader)."""

    max_len: int | None = None     # tokens per cell after cropping (None: as stored); not for patch corpora
    crop: str = "auto"             # cells longer than max_len: "head", "sample" or "auto" (rank: head, binned: sample)
    batch_size: int = 32           # cells per batch and rank (the cap when max_tokens is set)
    max_tokens: int | None = None  # token budget per batch: cells x padded length <= max_tokens (None: off)
    bucket_batches: int = 100      # length-sorting window, in batches of batch_size cells (0: no bucketing)
    shuffle: bool = True           # shuffle cells and batches each epoch (False: corpus order, for evaluation)
    drop_last: bool = True         # remainder rule (module docstring): drop (True) or wrap-pad (False)
    seed: int = 0                  # seed of the cell order, crops (and, by convention, the collator's)
    num_workers: int = 0           # DataLoader worker processes
    pin_memory: bool = False       # page-locked batches (faster host-to-GPU copies)
    prefetch_factor: int = 2       # batches prefetched per worker (num_workers > 0)

    def __post_init__(self):
        name = "DataConfig"
        if self.max_len is not None:
            _check_int(name, "max_len", self.max_len, low=1)
        if self.crop not in CROPS:
            raise InputError(f"{name}: crop must be one of {CROPS}, got {self.crop!r}")
        _check_int(name, "batch_size", self.batch_size, low=1)
        if self.max_tokens is not None:
            _check_int(name, "max_tokens", self.max_tokens, low=1)
        _check_int(name, "bucket_batches", self.bucket_batches)
        _check_int(name, "seed", self.seed)
        _check_int(name, "num_workers", self.num_workers)
        _check_int(name, "prefetch_factor", self.prefetch_factor, low=1)
        for flag in ("shuffle", "drop_last", "pin_memory"):
            if not isinstance(getattr(self, flag), bool):
                raise InputError(f"{name}: {flag} must be true or false, got {getattr(self, flag)!r}")


class TokenDataset(Dataset):
    """The cells of a token corpus, by global index, read through memory maps.

    Parameters
    ----------
    corpus
        A :class:`~cellmamba.tokenize.TokenCorpus`, or the path of its ``manifest.json``
        (or of the directory holding it).
    max_len
        Tokens kept per cell (None: all stored); see the module docstring's crop rule.
        Binned needs ``max_len >= 2`` (``<cls>`` + a gene); patch corpora take None only.
    crop
        "auto", "head" or "sample".
    seed
        Seed of ``crop="sample"``.
    verify
        Checks of the shards when ``corpus`` is a path (:class:`~cellmamba.tokenize.TokenCorpus`):
        "sample" (default: sizes and sampled blocks against the manifest's digests, cheap at
        any corpus size), "full" (every sha256), "none". The full check of a training run runs
        in the background (:meth:`~cellmamba.tokenize.TokenCorpus.verify_in_background`).

    Items (``dataset[i]``), a dict:

    - ``tokens`` int64 (n,): token ids (patch: feature positions), cropped;
    - ``values`` (n,): uint8 bins (binned), float32 (patch), None (rank);
    - ``dataset`` int: index into :attr:`datasets` (the union of the shards' dataset lists, in
      order of first appearance; shards index their own lists, this index is corpus-wide);
    - ``length`` int: the sequence length the model sees (n; patch: n_patches);
    - ``cell_index`` int: ``i``;
    - ``measured`` bool (n_genes,): genes the cell's dataset measured (a view, no copy);
    - ``stored`` uint32 (n_stored,): every stored token of the cell, before cropping (a view);
    - ``complete`` bool: every expressed gene of the cell is stored (its stored length is below
      the tokenizer's max_len; patch: always);
    - ``n_features`` int (patch only).

    A pickled dataset (DataLoader workers under spawn / forkserver) carries the manifest path,
    not the memory maps: each worker reopens the corpus (unverified: the parent checked it),
    nothing is copied.
    """

    def __init__(self, corpus, *, max_len: int | None = None, crop: str = "auto", seed: int = 0,
                 verify: str = "sample"):
        if isinstance(corpus, TokenCorpus):
            self._corpus: TokenCorpus | None = corpus
            self.path = Path(corpus.path)
        elif isinstance(corpus, (str, os.PathLike)):
            self._corpus = TokenCorpus(corpus, verify=verify)
            self.path = Path(self._corpus.path)
        else:
            raise InputError(f"TokenDataset: corpus must be a TokenCorpus or a manifest path, got "
                             f"{type(corpus).__name__}")
        manifest = self._corpus.manifest
        self.tokenizer: str = manifest["tokenizer"]
        self.settings: dict = dict(manifest["settings"])
        self.n_genes = int(manifest["n_genes"])
        if max_len is not None:
            _check_int("TokenDataset", "max_len", max_len, low=2 if self.tokenizer == "binned" else 1)
            if self.tokenizer == "patch":
                raise InputError(f"TokenDataset: max_len={max_len} given for a patch corpus ({self.path}); patch "
                                 f"cells are never cropped, use max_len=None")
        if crop not in CROPS:
            raise InputError(f"TokenDataset: crop must be one of {CROPS}, got {crop!r}")
        _check_int("TokenDataset", "seed", seed)
        self.max_len, self.seed, self.epoch = max_len, int(seed), 0
        self.crop = crop if crop != "auto" else ("sample" if self.tokenizer == "binned" else "head")
        self._stored_max = self.settings.get("max_len") if self.tokenizer in ("rank", "binned") else None
        self.n_patches = int(self.settings["n_patches"]) if self.tokenizer == "patch" else None
        self.datasets: list[str] = []
        index: dict[str, int] = {}
        self._dataset_maps = []
        for shard in self._corpus.shards:
            for d in shard.datasets:
                index.setdefault(d, len(index))
            self._dataset_maps.append(np.array([index[d] for d in shard.datasets], dtype=np.int64))
        self.datasets = list(index)
        self.n_cells = len(self._corpus)
        self._lengths: np.ndarray | None = None

    # --- pickling: reopen the memory maps instead of copying them ---
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_corpus"] = None
        state["_lengths"] = None
        return state

    @property
    def corpus(self) -> TokenCorpus:
        if self._corpus is None:
            self._corpus = TokenCorpus(self.path)
        return self._corpus

    def __len__(self) -> int:
        return self.n_cells

    def set_epoch(self, epoch: int) -> None:
        """Key ``crop="sample"`` draws to ``epoch`` (new subsets each epoch)."""
        _check_int("TokenDataset", "epoch", epoch)
        self.epoch = int(epoch)

    @property
    def lengths(self) -> np.ndarray:
        """(n_cells,) the sequence length of every cell after cropping (patch: n_patches),
        uint16 when ``max_len < 65536`` else int64; computed from the shards' offsets once."""
        if self._lengths is None:
            if self.tokenizer == "patch":
                self._lengths = np.full(self.n_cells, self.n_patches, dtype=np.int64)
            else:
                cap = self.max_len if self.max_len is not None else self._stored_max
                dtype = np.uint16 if cap is not None and cap < 65536 else np.int64
                parts = []
                for shard in self.corpus.shards:
                    n = np.diff(np.asarray(shard.offsets))
                    parts.append((np.minimum(n, self.max_len) if self.max_len is not None else n).astype(dtype))
                self._lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        return self._lengths

    def _crop(self, n: int, tokens: np.ndarray, i: int):
        if self.max_len is None or n <= self.max_len:
            return slice(0, n)
        if self.crop == "head":
            return slice(0, self.max_len)
        rng = np.random.default_rng([self.seed, self.epoch, i, _STREAM_CROP])
        if n and int(tokens[0]) == CLS_ID:
            keep = np.sort(rng.choice(n - 1, size=self.max_len - 1, replace=False)) + 1
            return np.concatenate([[0], keep])
        return np.sort(rng.choice(n, size=self.max_len, replace=False))

    def __getitem__(self, i) -> dict:
        i = int(i)
        if not 0 <= i < self.n_cells:
            raise IndexError(f"TokenDataset ({self.path}): cell {i} out of range (n_cells {self.n_cells})")
        corpus = self.corpus
        loc = corpus.locate(i)
        shard = corpus.shards[loc.shard]
        cell = shard[loc.local]
        n = cell.tokens.shape[0]
        sel = self._crop(n, cell.tokens, i)
        tokens = np.asarray(cell.tokens[sel], dtype=np.int64)
        item = {
            "tokens": tokens,
            "values": None if cell.values is None else np.asarray(cell.values[sel]),
            "dataset": int(self._dataset_maps[loc.shard][cell.dataset]),
            "length": int(tokens.shape[0]) if self.n_patches is None else self.n_patches,
            "cell_index": i,
            "measured": shard.measured[cell.dataset],
            "stored": cell.tokens,
            "complete": True if self._stored_max is None else n < int(self._stored_max),
        }
        if self.tokenizer == "patch":
            item["n_features"] = int(self.settings["n_features"])
        return item


@njit(cache=True, nogil=True)
def _budget_batches(lengths, window_ends, max_batch, max_tokens):  # pragma: no cover - numba
    """Greedy token-budget batches over cells already sorted by length within windows.

    A batch closes before a cell that would make ``count * longest > max_tokens`` or
    ``count > max_batch``, and at each window end. Returns the batch end offsets."""
    ends = np.empty(lengths.shape[0], dtype=np.int64)
    nb = 0
    start = 0
    w = 0
    longest = 0
    for i in range(lengths.shape[0]):
        count = i - start
        if i == window_ends[w]:
            w += 1
            if count > 0:
                ends[nb] = i
                nb += 1
                start, count, longest = i, 0, 0
        L = max(longest, lengths[i])
        if count > 0 and ((count + 1) * L > max_tokens or count + 1 > max_batch):
            ends[nb] = i
            nb += 1
            start, longest = i, lengths[i]
        else:
            longest = L
    if lengths.shape[0] > start:
        ends[nb] = lengths.shape[0]
        nb += 1
    return ends[:nb]


class DistributedBucketSampler(Sampler):
    """Batches of global cell indices for one rank, length-bucketed (a ``batch_sampler``).

    Each epoch: shuffle all cells (the same order on every rank), apply the remainder rule
    (module docstring), give rank r the cells ``order[r::world_size]`` (disjoint, equal
    shares), cut the share into windows of ``bucket_batches * batch_size`` cells, sort each
    window by length (stable, so equal lengths stay in random order), cut it into batches
    (``batch_size`` cells, or greedily under ``max_tokens``), and shuffle the batches. Batches
    hold cells of similar length, so padding is small, while the batch order stays random.

    Parameters
    ----------
    lengths
        (n_cells,) sequence length of each cell (``TokenDataset.lengths``).
    batch_size, max_tokens, bucket_batches, shuffle, drop_last, seed
        As in :class:`DataConfig`. A cell longer than ``max_tokens`` gets a batch of its own.
    rank, world_size
        This process's place (``DistEnv.rank`` / ``world_size``).

    Yields
    ------
    list[int] per batch; :meth:`set_epoch` selects the epoch (and a batch to resume from).
    """

    def __init__(self, lengths, *, batch_size: int = 32, max_tokens: int | None = None, bucket_batches: int = 100,
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        name = "DistributedBucketSampler"
        _check_int(name, "batch_size", batch_size, low=1)
        if max_tokens is not None:
            _check_int(name, "max_tokens", max_tokens, low=1)
        _check_int(name, "bucket_batches", bucket_batches)
        _check_int(name, "seed", seed)
        _check_int(name, "world_size", world_size, low=1)
        _check_int(name, "rank", rank)
        if rank >= world_size:
            raise InputError(f"{name}: rank {rank} must be < world_size {world_size}")
        self.lengths = np.asarray(lengths)
        if self.lengths.ndim != 1:
            raise InputError(f"{name}: lengths must be 1-D (one per cell), got shape {self.lengths.shape}")
        n = self.lengths.shape[0]
        if n < world_size or (drop_last and max_tokens is None and n // world_size < batch_size):
            need = world_size * (batch_size if drop_last and max_tokens is None else 1)
            raise InputError(f"{name}: {n} cells cannot fill one batch per rank (need >= {need}: world_size "
                             f"{world_size}, batch_size {batch_size}, drop_last {drop_last})")
        self.batch_size, self.max_tokens, self.bucket_batches = int(batch_size), max_tokens, int(bucket_batches)
        self.shuffle, self.drop_last, self.seed = bool(shuffle), bool(drop_last), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.start_batch = 0, 0
        self.followers: tuple = ()  # objects whose set_epoch this one calls (build_dataloader: dataset, collator)
        self._plan: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; ``start_batch`` skips that many batches of it (to resume a run
        mid-epoch at the same place). Holds until the next call. Also calls ``set_epoch(epoch)``
        of :attr:`followers`, so a training loop that only knows the sampler still reaches the
        dataset's crops and the collator's masks."""
        _check_int("DistributedBucketSampler", "epoch", epoch)
        _check_int("DistributedBucketSampler", "start_batch", start_batch)
        self.epoch, self.start_batch = int(epoch), int(start_batch)
        for obj in self.followers:
            obj.set_epoch(self.epoch)

    def _order(self) -> np.ndarray:
        n, ws = self.lengths.shape[0], self.world_size
        order = (np.random.default_rng([self.seed, self.epoch, _STREAM_ORDER]).permutation(n) if self.shuffle
                 else np.arange(n, dtype=np.int64))
        per = n // ws if self.drop_last else -(-n // ws)
        return np.resize(order, per * ws)  # truncates (drop_last) or wraps around (pad)

    def _rank_batches(self, share: np.ndarray) -> list[np.ndarray]:
        """Batches (arrays of global indices) of one rank's share, before the batch shuffle."""
        bs = self.batch_size
        if self.drop_last and self.max_tokens is None:
            share = share[:share.shape[0] // bs * bs]
        n = share.shape[0]
        lens = self.lengths[share].astype(np.int64)
        window = self.bucket_batches * bs
        if window > 0:
            win = np.arange(n, dtype=np.int64) // window
            share = share[np.lexsort((lens, win))]
            lens = self.lengths[share].astype(np.int64)
        if self.max_tokens is None:
            return [share[a:a + bs] for a in range(0, n, bs)]
        w = window if window > 0 else n
        window_ends = np.append(np.arange(w, n, w, dtype=np.int64), np.int64(-1))
        ends = _budget_batches(lens, window_ends, bs, int(self.max_tokens))
        starts = np.concatenate([[0], ends[:-1]])
        return [share[a:b] for a, b in zip(starts, ends)]

    def _shuffled(self, batches: list, rank: int) -> list:
        if not self.shuffle:
            return batches
        perm = np.random.default_rng([self.seed, self.epoch, rank, _STREAM_BATCHES]).permutation(len(batches))
        return [batches[j] for j in perm]

    def batches(self) -> list[np.ndarray]:
        """This rank's batches of the current epoch (all of them, ignoring ``start_batch``)."""
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1]
        order, ws = self._order(), self.world_size
        mine = self._shuffled(self._rank_batches(order[self.rank::ws]), self.rank)
        if self.max_tokens is not None and ws > 1:  # equalise the batch count over ranks
            counts = [len(mine) if r == self.rank else len(self._rank_batches(order[r::ws])) for r in range(ws)]
            target = min(counts) if self.drop_last else max(counts)
            mine = mine[:target] if len(mine) >= target else [mine[j % len(mine)] for j in range(target)]
        self._plan = (self.epoch, mine)
        return mine

    def __iter__(self):
        for b in self.batches()[self.start_batch:]:
            yield b.tolist()

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start_batch)


class CellDataLoader(DataLoader):
    """A DataLoader whose :meth:`set_epoch` reaches its batch sampler, dataset and collator.

    Workers are never persistent: each epoch's workers start from the objects as set by
    :meth:`set_epoch` (a persistent worker would keep the previous epoch's collator)."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select ``epoch`` everywhere; resume at batch ``start_batch`` of it."""
        self.batch_sampler.set_epoch(epoch, start_batch)
        for part in (self.dataset, self.collate_fn):
            if hasattr(part, "set_epoch") and part not in self.batch_sampler.followers:
                part.set_epoch(epoch)


def _seed_worker(worker_id: int) -> None:
    """Seed the global RNGs of a worker from torch's per-worker seed (base seed from the
    loader's generator + worker id). Our data randomness does not use them; this keeps any
    other code in the worker reproducible too."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_dataloader(data, collator, config: DataConfig = DataConfig(), *, rank: int = 0,
                     world_size: int = 1) -> CellDataLoader:
    """Dataset + :class:`DistributedBucketSampler` + collator -> a :class:`CellDataLoader`.

    Parameters
    ----------
    data
        A :class:`TokenDataset` or any Dataset of the same items with a ``lengths`` array (used
        as is), or a :class:`~cellmamba.tokenize.TokenCorpus` or corpus manifest path (a TokenDataset is built with ``config.max_len / crop / seed``).
    collator
        One of the collators, built with the same ``rank`` (its seed may differ).
    config
        :class:`DataConfig`.
    rank, world_size
        This process's place among the data-parallel ranks.

    Returns
    -------
    CellDataLoader yielding the batch dicts of docs/architecture.md; call
    ``loader.set_epoch(epoch)`` (or ``loader.batch_sampler.set_epoch(epoch)``: it reaches the
    dataset and the collator too) before iterating each epoch. The sampler's lengths are the
    dataset's, raised by ``collator.output_lengths`` where the collator adds tokens (zeros),
    so ``max_tokens`` budgets the padded batch.
    """
    if not isinstance(config, DataConfig):
        raise InputError(f"build_dataloader: config must be a DataConfig, got {type(config).__name__}")
    in_memory = isinstance(data, Dataset) and hasattr(data, "lengths")  # e.g. cellmamba.tasks.TokenCells
    dataset = data if isinstance(data, TokenDataset) or in_memory else TokenDataset(
        data, max_len=config.max_len, crop=config.crop, seed=config.seed)
    if getattr(collator, "rank", rank) != rank:
        raise InputError(f"build_dataloader: the collator was built for rank {collator.rank}, the loader is for "
                         f"rank {rank}")
    lengths = dataset.lengths
    if hasattr(collator, "output_lengths"):
        lengths = collator.output_lengths(lengths)
    sampler = DistributedBucketSampler(
        lengths, batch_size=config.batch_size, max_tokens=config.max_tokens, bucket_batches=config.bucket_batches,
        shuffle=config.shuffle, drop_last=config.drop_last, seed=config.seed, rank=rank, world_size=world_size)
    sampler.followers = tuple(x for x in (dataset, collator) if callable(getattr(x, "set_epoch", None)))
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([config.seed, rank]).generate_state(1, np.uint64)[0] >> 1))
    workers = config.num_workers
    return CellDataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=workers,
                          pin_memory=config.pin_memory, worker_init_fn=_seed_worker if workers else None,
                          generator=generator, persistent_workers=False,
                          prefetch_factor=config.prefetch_factor if workers else None)

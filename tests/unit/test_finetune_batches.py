"""Fine-tuning loaders: batch composition does not follow cell length, validation counts each cell once."""
from __future__ import annotations

import math

import numpy as np

from cellmamba.tasks import DatasetTokens, FinetuneConfig, TokenCells
from cellmamba.tasks.finetune import collator_for, train_loader, train_valid_loaders
from cellmamba.tokenize import TokenBatch
from cellmamba.vocab import N_SPECIAL

N_GENES = 48
LENGTH = {0: 4, 1: 40}  # tokens per cell, determined by the label


def _tokens_by_label(n: int, seed: int = 0) -> tuple[DatasetTokens, np.ndarray]:
    """Rank tokens of ``n`` cells, half of label 0 and half of label 1 in random order; a cell's
    length is LENGTH[its label], so a length-sorted batch is a batch of one label."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    lengths = np.array([LENGTH[int(y)] for y in labels])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    genes = [np.sort(rng.choice(N_GENES, size=k, replace=False)) + N_SPECIAL for k in lengths]
    batch = TokenBatch(offsets, np.concatenate(genes).astype(np.uint32), None)
    tokens = DatasetTokens(batch, np.ones(N_GENES, dtype=bool), "rank", "counts", N_GENES, 0, max(LENGTH.values()))
    return tokens, labels


def _majority_share(labels: np.ndarray) -> float:
    return np.bincount(labels).max() / len(labels)


def _random_majority_share(n: int, n0: int, b: int) -> float:
    """E[majority share] of a batch of ``b`` cells drawn without replacement from ``n`` cells,
    ``n0`` of label 0 (the rest label 1): the hypergeometric sum over k cells of label 0."""
    total = math.comb(n, b)
    return sum(math.comb(n0, k) * math.comb(n - n0, b - k) / total * max(k, b - k) / b for k in range(b + 1))


def test_finetune_batches_mix_labels_as_a_random_shuffle_does():
    n, b = 640, 32  # 20 full batches per epoch
    tokens, labels = _tokens_by_label(n)
    loader = train_loader(TokenCells(tokens), collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=0),
                          batch_size=b, seed=0)
    shares, seen = [], []
    for epoch in range(5):
        loader.set_epoch(epoch)
        for batch in loader:
            cells = batch["cell_index"].numpy()
            shares.append(_majority_share(labels[cells]))
            seen.append(np.sort(cells))
    assert len(shares) == 5 * n // b
    expected = _random_majority_share(n, int((labels == 0).sum()), b)
    assert 0.55 < expected < 0.6  # about 0.57 for 16 + 16 expected of each label
    # length-sorted batches would each hold one label (share 1.0)
    assert abs(np.mean(shares) - expected) < 0.03, (np.mean(shares), expected)
    assert not np.array_equal(seen[0], seen[n // b])  # a new order each epoch


def test_validation_loader_yields_each_cell_once():
    n = 200
    tokens, _ = _tokens_by_label(n, seed=1)
    rng = np.random.default_rng(2)
    valid_cells = np.sort(rng.choice(n, size=70, replace=False))  # 70 = 2 x 32 + 6: a smaller last batch
    train_cells = np.setdiff1d(np.arange(n), valid_cells)
    collator = collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=0)
    loader, valid, settings = train_valid_loaders(tokens, train_cells, valid_cells, collator,
                                                  FinetuneConfig(batch_size=32, seed=3))
    assert settings.batch_size == 32
    for data, cells in ((valid, valid_cells), (loader, train_cells)):
        batches = [batch["cell_index"].numpy() for batch in data]
        assert sorted(len(x) for x in batches)[0] == len(cells) % 32
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), cells)  # every cell once

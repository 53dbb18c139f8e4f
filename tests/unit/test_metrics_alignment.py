"""Seurat's alignment score (Butler et al. 2018) against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from cellmamba.errors import InputError
from cellmamba.metrics.foscttm import seurat_alignment_score


def _line(points):
    return np.asarray(points, dtype=float)[:, None]


def test_two_groups_k1_hand_computed():
    # A = {0, 1}, B = {2.5, 11}; k = round(0.25 * 4) = 1. Nearest neighbours: 0 -> 1 (A, same),
    # 1 -> 0 (A, same; 2.5 is 1.5 away), 2.5 -> 1 (A, other), 11 -> 2.5 (B, same): mean x = 3/4.
    # score = 1 - (3/4 - 1/2) / (1 - 1/2) = 0.5
    x = _line([0, 1, 2.5, 11])
    assert seurat_alignment_score(x, ["A", "A", "B", "B"], neighbor_frac=0.25) == pytest.approx(0.5)


def test_three_groups_k1_hand_computed():
    # A = {0, 1}, B = {10, 11}, C = {1.6, 30}; k = round(0.2 * 6) = 1.
    # 0 -> 1 same, 1 -> 1.6 other, 10 -> 11 same, 11 -> 10 same, 1.6 -> 1 other, 30 -> 11 other: mean x = 1/2.
    # score = 1 - (1/2 - 1/3) / (1 - 1/3) = 0.75
    x = _line([0, 1, 10, 11, 1.6, 30])
    assert seurat_alignment_score(x, list("AABBCC"), neighbor_frac=0.2) == pytest.approx(0.75)


def test_two_groups_k2_hand_computed():
    # A = {0, 1, 2}, B = {2.4, 10, 11}; k = round(6 / 3) = 2. Own-group neighbours among the 2 nearest:
    # 0: {1, 2} 2; 1: {0, 2} 2; 2: {2.4, 1} 1; 2.4: {2, 1} 0; 10: {11, 2.4} 2; 11: {10, 2.4} 2 -> mean x = 3/2.
    # score = 1 - (3/2 - 1) / (2 - 1) = 0.5
    x = _line([0, 1, 2, 2.4, 10, 11])
    assert seurat_alignment_score(x, list("AAABBB"), neighbor_frac=1 / 3) == pytest.approx(0.5)


def test_separated_is_zero_below_chance_capped_at_one():
    assert seurat_alignment_score(_line([0, 1, 10, 11]), list("AABB"), neighbor_frac=0.25) == 0.0
    # every nearest neighbour from the other group: mean x = 0 gives 2, capped at 1
    assert seurat_alignment_score(_line([0, 10, 0.1, 20]), list("AABB"), neighbor_frac=0.25) == 1.0


def test_unequal_groups_are_subsampled_seeded():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 1, size=(500, 3)), rng.normal(50, 1, size=(100, 3))])
    groups = ["big"] * 500 + ["small"] * 100
    assert seurat_alignment_score(x, groups, seed=3) == 0.0                     # separated whatever the subsample
    mixed = rng.normal(size=(600, 3))
    a = seurat_alignment_score(mixed, groups, seed=1)
    assert a == seurat_alignment_score(mixed, groups, seed=1)                   # same seed, same subsamples
    # one cloud: close to chance (1). Without subsampling, 5/6 of every neighbourhood would be 'big'
    # cells: mean x = 5/6 k, a score of 1 - (5/6 - 1/2) / (1 - 1/2) = 1/3
    assert a > 0.8


def test_bad_input():
    with pytest.raises(InputError, match="at least 2 groups"):
        seurat_alignment_score(_line([0, 1, 2]), ["A"] * 3)
    with pytest.raises(InputError, match="neighbor_frac"):
        seurat_alignment_score(_line([0, 1, 2, 3]), list("AABB"), neighbor_frac=0)
    with pytest.raises(InputError, match="labels for"):
        seurat_alignment_score(_line([0, 1, 2, 3]), list("AAB"))

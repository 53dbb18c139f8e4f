"""Perturbation baselines on a hand-computed 3-gene case."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from cellmamba.baselines import additive_flags, condition_genes, perturbation_baseline
from cellmamba.errors import InputError

# cells (rows) x 3 genes, with their GEARS conditions
X = np.array([[1, 0, 2], [3, 0, 2],      # ctrl            -> mean [2, 0, 2]
              [4, 1, 2], [4, 3, 2],      # A+ctrl          -> mean [4, 2, 2], effect dA = [2, 2, 0]
              [2, 0, 5],                 # ctrl+B          -> mean [2, 0, 5], effect dB = [0, 0, 3]
              [9, 9, 9],                 # A+B (training combo)
              [7, 7, 7]], dtype=float)   # C+ctrl (not in training)
CONDITIONS = ["ctrl", "ctrl", "A+ctrl", "A+ctrl", "ctrl+B", "A+B", "C+ctrl"]
TRAIN = ["ctrl", "A+ctrl", "ctrl+B", "A+B"]
PREDICT = ["A+B", "B+A", "A+C", "C+ctrl", "ctrl"]
CTRL = np.array([2.0, 0.0, 2.0])


@pytest.mark.parametrize("dense", [True, False])
def test_additive_is_ctrl_plus_single_effects(dense, caplog):
    data = X if dense else sp.csr_matrix(X)
    with caplog.at_level(logging.WARNING, logger="cellmamba.baselines.perturbation"):
        pred = perturbation_baseline(data, CONDITIONS, method="additive", train_conditions=TRAIN,
                                     predict_conditions=PREDICT)
    assert list(pred) == PREDICT
    np.testing.assert_array_equal(pred["A+B"], CTRL + [2, 2, 0] + [0, 0, 3])  # [4, 2, 5]
    np.testing.assert_array_equal(pred["B+A"], [4, 2, 5])
    np.testing.assert_array_equal(pred["A+C"], CTRL + [2, 2, 0])  # C unseen: its effect is zero, flagged
    np.testing.assert_array_equal(pred["C+ctrl"], CTRL)
    np.testing.assert_array_equal(pred["ctrl"], CTRL)
    assert "A+C: C" in caplog.text and "C+ctrl: C" in caplog.text
    assert additive_flags(TRAIN, PREDICT) == {"A+B": (), "B+A": (), "A+C": ("C",), "C+ctrl": ("C",), "ctrl": ()}


def test_no_change_and_train_mean():
    pred = perturbation_baseline(X, CONDITIONS, method="no_change", train_conditions=TRAIN, predict_conditions=PREDICT)
    for c in PREDICT:
        np.testing.assert_array_equal(pred[c], CTRL)
    pred = perturbation_baseline(X, CONDITIONS, method="train_mean", train_conditions=TRAIN, predict_conditions=PREDICT)
    want = (np.array([4, 2, 2]) + np.array([2, 0, 5]) + np.array([9, 9, 9])) / 3  # A, B, A+B; ctrl excluded
    for c in PREDICT:
        np.testing.assert_allclose(pred[c], want)


def test_both_orders_of_a_single_are_one_perturbation():
    Xo = np.vstack([X, [[6, 3, 2]]])  # a ctrl+A cell: single A over 3 cells, mean [14/3, 7/3, 2]
    conds = CONDITIONS + ["ctrl+A"]
    pred = perturbation_baseline(Xo, conds, method="additive", train_conditions=TRAIN + ["ctrl+A"],
                                 predict_conditions=["A+ctrl"])
    np.testing.assert_allclose(pred["A+ctrl"], [14 / 3, 7 / 3, 2])
    pred = perturbation_baseline(Xo, conds, method="train_mean", train_conditions=TRAIN + ["ctrl+A"],
                                 predict_conditions=["A+B"])
    np.testing.assert_allclose(pred["A+B"], (np.array([14 / 3, 7 / 3, 2]) + [2, 0, 5] + [9, 9, 9]) / 3)


def test_condition_strings_and_errors():
    assert condition_genes("ctrl") == ()
    assert condition_genes("ctrl+B") == ("B",)
    assert condition_genes("B+A") == ("A", "B")
    for bad in ("A", "A+B+C", "ctrl+ctrl", "A+A", "A+"):
        with pytest.raises(InputError, match="condition"):
            condition_genes(bad)
    with pytest.raises(InputError, match="no cells"):
        perturbation_baseline(X, CONDITIONS, method="additive", train_conditions=TRAIN + ["D+ctrl"],
                              predict_conditions=["A+B"])
    with pytest.raises(InputError, match="'ctrl'"):
        perturbation_baseline(X[2:], CONDITIONS[2:], method="no_change", train_conditions=["A+ctrl"],
                              predict_conditions=["A+B"])
    with pytest.raises(InputError, match="'mean'"):
        perturbation_baseline(X, CONDITIONS, method="mean", train_conditions=TRAIN, predict_conditions=["A+B"])
    with pytest.raises(InputError, match="only ctrl"):
        perturbation_baseline(X, CONDITIONS, method="train_mean", train_conditions=["ctrl"], predict_conditions=["A+B"])

"""GEARS 0.0.2 simulation split: identical to GEARS' own DataSplitter; reverse-perturbation grid."""
from __future__ import annotations

import json
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellmamba.datasets.gears_split import (SUBGROUPS, PerturbationSplit, make_split_file, read_split, reverse_grid,
                                            simulation_split, split_of_cells, subgroup_of, write_split)
from _gears_ref import load_gears_data_utils
from cellmamba.errors import InputError

@pytest.fixture(scope="module")
def gears_data_utils():
    """GEARS 0.0.2's own ``gears/data_utils.py`` (see _gears_ref)."""
    return load_gears_data_utils("_gears_ref_stub", needed_for="its DataSplitter")


def _conditions(n_genes: int, n_singles: int, n_combos: int, seed: int) -> list:
    """Per-cell condition list: singles spelled both ways (some genes both), combos A+B in random order."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:03d}{'XYZ'[i % 3]}" for i in rng.permutation(n_genes)]
    singles = []
    for k in range(n_singles):
        g = genes[k % n_genes]
        singles.append(f"{g}+ctrl" if rng.random() < 0.5 else f"ctrl+{g}")
    singles = list(dict.fromkeys(singles))
    pairs = set()
    while len(pairs) < n_combos:
        a, b = rng.choice(n_genes, 2, replace=False)
        if (b, a) not in pairs:
            pairs.add((int(a), int(b)))
    combos = [f"{genes[a]}+{genes[b]}" for a, b in sorted(pairs)]
    unique = ["ctrl"] + singles + combos
    cells = list(rng.choice(unique, size=4 * len(unique)))
    return cells + unique  # every condition present; first-appearance order is shuffled


def _gears_reference(data_utils, cells: list, seed: int, tgs: float, frac: float):
    """GEARS' split_data on an AnnData of these cells, and its list order from get_simulation_split."""
    adata = ad.AnnData(obs=pd.DataFrame({"condition": pd.Categorical(cells)},
                                        index=[f"c{i}" for i in range(len(cells))]))
    splitter = data_utils.DataSplitter(adata, split_type="simulation")
    adata, subgroup = splitter.split_data(seed=seed, train_gene_set_size=tgs, combo_seen2_train_frac=frac)
    unique_perts = [p for p in adata.obs["condition"].unique() if p != "ctrl"]
    train, test, _ = splitter.get_simulation_split(unique_perts, tgs, frac, seed)
    train, val, _ = splitter.get_simulation_split(train, 0.9, 0.9, seed)
    train.append("ctrl")
    return adata.obs["split"].astype(str).to_numpy(), subgroup, ([str(c) for c in x] for x in (train, val, test))


CASES = [  # n_genes, n_singles, n_combos, list seed, split seed, train_gene_set_size, combo_seen2_train_frac
    (8, 8, 10, 0, 1, 0.75, 0.75),
    (12, 15, 20, 1, 2, 0.75, 0.75),
    (20, 25, 40, 2, 1, 0.6, 0.5),
    (30, 30, 0, 3, 2, 0.75, 0.75),  # singles only
    (100, 150, 130, 4, 1, 0.75, 0.75),  # Norman-like
    (100, 150, 130, 5, 2, 0.75, 0.75),
]


@pytest.mark.parametrize("n_genes,n_singles,n_combos,list_seed,seed,tgs,frac", CASES)
def test_identical_to_gears(gears_data_utils, n_genes, n_singles, n_combos, list_seed, seed, tgs, frac):
    cells = _conditions(n_genes, n_singles, n_combos, list_seed)
    state = np.random.get_state()[1].copy()
    split = simulation_split(cells, seed=seed, train_gene_set_size=tgs, combo_seen2_train_frac=frac)
    assert np.array_equal(np.random.get_state()[1], state), "the global numpy RNG must not be touched"
    ref_cells, ref_subgroup, (train, val, test) = _gears_reference(gears_data_utils, cells, seed, tgs, frac)
    assert (split.train, split.val, split.test) == (train, val, test)
    assert split.test_subgroup == ref_subgroup["test_subgroup"]
    assert split.val_subgroup == ref_subgroup["val_subgroup"]
    assert list(split_of_cells(cells, split)) == list(ref_cells)
    if n_combos:
        assert sum(len(split.test_subgroup[k]) for k in ("combo_seen0", "combo_seen1", "combo_seen2")) > 0


def test_unique_list_equals_per_cell(gears_data_utils):
    cells = _conditions(20, 25, 30, 7)
    assert simulation_split(pd.unique(np.asarray(cells)), seed=1) == simulation_split(cells, seed=1)
    assert simulation_split(pd.Categorical(cells), seed=1) == simulation_split(cells, seed=1)


def test_description_of_datasets_md():
    """DATASETS.md §5: train genes = choice(sorted genes, int(0.75 n)); a combo's subgroup is its
    number of train genes; int(0.75 n2) of the two-seen combos go to train."""
    cells = _conditions(40, 50, 60, 11)
    split = simulation_split(cells, seed=3)
    perts = [c for c in pd.unique(np.asarray(cells)) if c != "ctrl"]
    genes = sorted({g for c in perts for g in c.split("+") if g != "ctrl"})
    train_genes = set(np.random.RandomState(3).choice(genes, int(len(genes) * 0.75), replace=False))
    sub = subgroup_of(split)
    n_seen2 = 0
    for c in perts:
        parts = c.split("+")
        if "ctrl" in parts:
            g = parts[0] if parts[1] == "ctrl" else parts[1]
            assert (c in split.train or c in split.val) == (g in train_genes)
            assert (sub.get(c) == "unseen_single") == (g not in train_genes)
            continue
        seen = sum(g in train_genes for g in parts)
        if seen == 2:
            n_seen2 += 1
            assert sub.get(c) in (None, "combo_seen2")
        else:
            assert sub[c] == f"combo_seen{seen}"
    assert len(split.test_subgroup["combo_seen2"]) == n_seen2 - int(n_seen2 * 0.75)
    assert split.train[-1] == "ctrl" and "ctrl" not in split.val + split.test
    assert set(split.train) | set(split.val) | set(split.test) == set(perts) | {"ctrl"}


def test_hand_made_extremes():
    # all genes seen, no two-seen combo kept in train: the combo is combo_seen2
    split = simulation_split(["ctrl", "A+ctrl", "ctrl+B", "A+B"], seed=1, train_gene_set_size=1.0,
                             combo_seen2_train_frac=0.0)
    assert split.test_subgroup == {"combo_seen0": [], "combo_seen1": [], "combo_seen2": ["A+B"], "unseen_single": []}
    assert split.test == ["A+B"] and sorted(split.train + split.val) == ["A+ctrl", "ctrl", "ctrl+B"]
    # no gene seen: singles are unseen_single, combos combo_seen0, train holds only ctrl
    split = simulation_split(["ctrl", "A+ctrl", "ctrl+B", "A+B", "C+B"], seed=1, train_gene_set_size=0.0)
    assert split.test_subgroup == {"combo_seen0": ["A+B", "C+B"], "combo_seen1": [], "combo_seen2": [],
                                   "unseen_single": ["A+ctrl", "ctrl+B"]}
    assert split.train == ["ctrl"] and split.val == []


def test_bad_input():
    with pytest.raises(InputError, match="A\\+B\\+C"):
        simulation_split(["ctrl", "A+B+C"])
    with pytest.raises(InputError, match="ctrl"):
        simulation_split(["ctrl"])
    with pytest.raises(InputError, match="containing 'ctrl'"):
        simulation_split(["ctrl", "ctrlX+B"])
    with pytest.raises(InputError, match="train_gene_set_size"):
        simulation_split(["A+ctrl"], train_gene_set_size=1.5)
    split = simulation_split(["ctrl", "A+ctrl", "B+ctrl"], seed=1)
    with pytest.raises(InputError, match="Z\\+ctrl"):
        split_of_cells(["A+ctrl", "Z+ctrl"], split)


# --------------------------------------------------------------------------- reverse grid
def _hand_split() -> PerturbationSplit:
    empty = {k: [] for k in SUBGROUPS}
    return PerturbationSplit(
        train=["ctrl+A", "A+B", "B+ctrl", "C+D", "ctrl"], val=["ctrl+E"], test=["A+C", "ctrl+C", "B+D", "D+E"],
        test_subgroup={**empty, "combo_seen1": ["A+C", "B+D", "D+E"], "unseen_single": ["ctrl+C"]},
        val_subgroup={**empty, "unseen_single": ["ctrl+E"]}, seed=1, settings={})


def test_reverse_grid_hand_made(caplog):
    split = _hand_split()
    conds = split.train + split.val + split.test
    # columns: A {train A, train B, test C} 3; B {train A, test D} 2 (B+ctrl unmarked, scGPT's quirk);
    # C {train D, test A, test C} 3; D {train C, test B, test E} 3; E has no train entry
    grid = reverse_grid(conds, split, n_genes=3)
    assert grid.genes == ["A", "C", "D"] and grid.scores == {"A": 3, "C": 3, "D": 3}
    assert grid.candidates == ["A+C", "A+D", "A+ctrl", "C+D", "C+ctrl", "D+ctrl"]
    assert grid.queries == ["A+C"]
    # both single spellings: B scores 3 too, the tie is broken by name
    grid = reverse_grid(conds, split, n_genes=3, scgpt_single_quirk=False)
    assert grid.genes == ["A", "B", "C"] and grid.queries == ["A+C"]
    with caplog.at_level(logging.WARNING, logger="cellmamba.datasets.gears_split"):
        grid = reverse_grid(conds, split, n_genes=20)
    assert grid.genes == ["A", "B", "C", "D"] and grid.queries == ["A+C", "B+D"]
    assert len(grid.candidates) == 4 + 6 and "only 4 genes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmamba.datasets.gears_split"):
        grid = reverse_grid(conds, split, n_genes=1)
    assert grid.genes == ["A"] and grid.candidates == ["A+ctrl"] and grid.queries == [] and "no query" in caplog.text
    with pytest.raises(InputError, match="n_genes"):
        reverse_grid(conds, split, n_genes=0)


def _scgpt_gene_scores(split: PerturbationSplit, cells: list) -> pd.Series:
    """scGPT's notebook (Tutorial_Reverse_Perturbation), literally: the label matrix and its scores."""
    test_gene_list = []
    for i in split.test_subgroup:
        for g in split.test_subgroup[i]:
            if g.split("+")[0] != "ctrl":
                test_gene_list.append(g.split("+")[0])
            if g.split("+")[1] != "ctrl":
                test_gene_list.append(g.split("+")[1])
    test_gene_list = sorted(set(test_gene_list))
    df = pd.DataFrame(np.zeros((len(test_gene_list), len(test_gene_list))), columns=test_gene_list,
                      index=test_gene_list).astype(object)
    where = split_of_cells(cells, split)
    for label, name in (("Train", "train"), ("Valid", "val"), ("Test", "test")):
        for i in np.asarray(cells)[where == name]:
            if i != "ctrl":
                g0, g1 = i.split("+")
                if g0 == "ctrl" and g1 in test_gene_list:
                    df.loc[g1, g1] = label
                elif g1 == "ctrl" and g1 in test_gene_list:
                    df.loc[g0, g0] = label
                elif g0 in test_gene_list and g1 in test_gene_list:
                    df.loc[g0, g1] = label
                    df.loc[g1, g0] = label
    sub = list(set(df[(df == "Train").sum(0) > 0].index).intersection(df[(df == "Test").sum(0) > 0].index))
    return (df.loc[:, sub] == "Train").sum(0) + (df.loc[:, sub] == "Test").sum(0)


def test_reverse_grid_matches_scgpt_code():
    cells = _conditions(100, 150, 130, 4)
    split = simulation_split(cells, seed=1)
    grid = reverse_grid(cells, split, n_genes=20)
    scores = _scgpt_gene_scores(split, cells)
    expected = sorted(scores.index, key=lambda g: (-scores[g], g))[:20]
    assert grid.genes == sorted(expected) and grid.scores == {g: int(scores[g]) for g in grid.genes}
    # scGPT keeps the 20 best by score: the set of scores is the same whatever its tie order
    assert sorted(scores.sort_values()[-20:].tolist()) == sorted(grid.scores.values())
    pairs = [c for c in grid.candidates if not c.endswith("+ctrl")]
    assert len(grid.candidates) == 20 + 190 and all(a < b for a, b in (p.split("+") for p in pairs))
    test_combos = [c for c in split.test if "ctrl" not in c]
    assert grid.queries == sorted(c for c in test_combos if set(c.split("+")) <= set(grid.genes))
    assert grid.queries, "a Norman-like list has queries in its 20-gene grid"


# --------------------------------------------------------------------------- files
def test_write_read_roundtrip(tmp_path):
    cells = _conditions(20, 25, 30, 9)
    split = simulation_split(cells, seed=2)
    split = PerturbationSplit(**{**split.__dict__, "reverse": reverse_grid(cells, split, n_genes=6)})
    path = write_split(split, tmp_path / "sub" / "split.json")
    data = json.loads(path.read_text())
    assert data["gears_version"] == "0.0.2" and data["settings"]["train_gene_set_size"] == 0.75
    back = read_split(path)
    assert back == split
    assert back.reverse_candidates == split.reverse.candidates and back.reverse_queries == split.reverse.queries
    assert simulation_split(cells, seed=2).reverse_candidates == []
    assert not list(path.parent.glob(".*tmp*"))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("train"), "missing key"),
    (lambda d: d.update(train="A+ctrl"), "'train'"),
    (lambda d: d.update(test_subgroup={"combo_seen0": []}), "'test_subgroup'"),
    (lambda d: d["test_subgroup"].update(combo_seen0=["Q+R"]), "not in 'test'"),
    (lambda d: d.update(val=d["val"] + d["train"][:1]), "in both"),
    (lambda d: d.update(gears_version="0.1.2"), "gears_version"),
    (lambda d: d.update(reverse={"genes": []}), "'reverse'"),
    (lambda d: d.update(seed="1"), "'seed'"),
])
def test_read_split_rejects_malformed(tmp_path, edit, match):
    split = simulation_split(_conditions(12, 12, 15, 1), seed=1)
    data = split.to_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=match) as info:
        read_split(path)
    assert str(path) in str(info.value)


def test_read_split_not_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_split(path)
    with pytest.raises(InputError, match="no such file"):
        read_split(tmp_path / "absent.json")


def test_make_split_file(tmp_path, caplog):
    cells = _conditions(30, 40, 40, 5)
    adata = ad.AnnData(X=np.zeros((len(cells), 2), dtype=np.float32),
                       obs=pd.DataFrame({"condition": pd.Categorical(cells)}, index=[f"c{i}" for i in range(len(cells))]))
    h5ad = tmp_path / "pert.h5ad"
    adata.write_h5ad(h5ad)
    with caplog.at_level(logging.INFO, logger="cellmamba.datasets.gears_split"):
        split = make_split_file(h5ad, tmp_path / "split.json", seed=1, train_gene_set_size=0.75,
                                combo_seen2_train_frac=0.75, reverse_genes=8)
    assert "combo_seen1" in caplog.text
    assert read_split(tmp_path / "split.json") == split
    direct = simulation_split(cells, seed=1)
    assert (split.train, split.val, split.test, split.test_subgroup) == \
        (direct.train, direct.val, direct.test, direct.test_subgroup)
    assert split.reverse == reverse_grid(cells, direct, n_genes=8)
    with pytest.raises(InputError, match="obs has no column 'perturbation'"):
        make_split_file(h5ad, tmp_path / "s2.json", condition_key="perturbation")
    with pytest.raises(InputError, match="no such file"):
        make_split_file(tmp_path / "absent.h5ad", tmp_path / "s3.json")
    assert not (tmp_path / "s2.json").exists()

"""GEARS 0.0.2 "simulation" split of perturbation conditions and the reverse-perturbation grid.

Split (DATASETS.md §5): :func:`simulation_split` reproduces
``gears.data_utils.DataSplitter(adata, split_type="simulation").split_data(seed=seed,
train_gene_set_size=..., combo_seen2_train_frac=...)`` of cell-gears 0.0.2 draw for draw:

1. ``unique_pert_genes`` = the sorted unique genes of the non-ctrl conditions;
   ``train_genes = choice(unique_pert_genes, int(n * train_gene_set_size), replace=False)``
   right after seeding with ``seed``; the other genes are out-of-distribution (OOD).
2. train gets the singles of train genes; ``combo_seen1`` (test) = combos with exactly one
   train gene; of the combos with two train genes (sorted, ``np.setdiff1d``), after reseeding,
   ``int(n * combo_seen2_train_frac)`` are drawn for train and the rest are ``combo_seen2``
   (test); ``unseen_single`` (test) = singles of OOD genes; ``combo_seen0`` (test) = combos
   with no train gene. test = combo_seen1 + combo_seen2 + unseen_single + combo_seen0.
3. Validation: the same function on the train list with 0.9 / 0.9 and the same seed.
4. ``ctrl`` is appended to train.

GEARS seeds numpy's global generator (``np.random.seed``); here a private
``np.random.RandomState(seed)`` is created at each reseed point, which gives the same draws
(the global generator *is* a RandomState) without touching global state. Like GEARS, a
condition is a single when the substring ``ctrl`` occurs in it, so a gene name containing
``ctrl`` is refused (GEARS would misclassify it). ``tests/unit/test_gears_split.py`` runs GEARS'
own ``DataSplitter`` and checks the lists and subgroups are identical.

Reverse-perturbation grid (DATASETS.md §5, scGPT Fig. 3F-G, SC-MAMBA2 ``Fig4_ReversePerturb.py``):
:func:`reverse_grid` follows scGPT's notebook: a gene x gene label matrix over the genes of the
test subgroups, filled from the train, then val, then test conditions (a later split
overwrites: a pair seen in train and test counts as test); a pair ``A+B`` sets cells (A, B) and
(B, A), a single sets the diagonal. Eligible genes have >= 1 train and >= 1 test entry in their
column; a gene's score is its number of train + test entries; the ``n_genes`` best are kept.
Candidates are ``itertools.combinations(sorted(genes) + ["ctrl"], 2)`` (singles and pairs),
queries the test combos (as spelled in the data, ``np.unique`` order) whose two genes are in
the grid.

Departures from the published code:
- Ties in the score: scGPT sorts with pandas' unstable ``sort_values`` over a Python ``set``
  order (not reproducible between runs); here ties are broken by gene name (ascending), i.e.
  genes are ranked by (score descending, name ascending).
- Singles on the diagonal: scGPT's ``update_df`` tests ``g1 == 'ctrl' and g1 in
  test_gene_list`` for ``A+ctrl``, which is never true, so only ``ctrl+A`` singles are marked.
  ``scgpt_single_quirk=True`` (default) reproduces that; ``False`` marks both spellings.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..conditions import CTRL, condition_genes
from ..errors import InputError
from ..io import atomic_path, read_json_object
from ..keys import OBS_CONDITION

__all__ = ["SUBGROUPS", "GEARS_VERSION", "PerturbationSplit", "ReverseGrid", "simulation_split", "reverse_grid",
           "write_split", "read_split", "split_of_cells", "subgroup_of", "make_split_file"]

log = logging.getLogger(__name__)

GEARS_VERSION = "0.0.2"
#: subgroup names of GEARS' simulation split, in GEARS' dict order
SUBGROUPS = ("combo_seen0", "combo_seen1", "combo_seen2", "unseen_single")
#: GEARS hard-codes the fractions of the validation split (made from the train list)
_VAL_FRACTIONS = 0.9
_SPLIT_NAMES = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class ReverseGrid:
    """Genes, candidate perturbations and query conditions of the reverse-perturbation task.

    Attributes
    ----------
    n_genes
        Number of grid genes requested (``genes`` may be shorter when fewer are eligible).
    genes
        The grid genes, sorted.
    candidates
        Every single (``A+ctrl``) and unordered pair (``A+B``, A < B) of ``genes``, in the order
        of ``itertools.combinations(genes + ["ctrl"], 2)``: len = g + g(g-1)/2.
    queries
        Test combo conditions (spelled as in the data, sorted) whose two genes are in ``genes``.
    scores
        gene -> number of train + test entries in its column of the label matrix (grid genes).
    """

    n_genes: int
    genes: list
    candidates: list
    queries: list
    scores: dict

    def to_dict(self) -> dict:
        return {"n_genes": int(self.n_genes), "genes": list(self.genes), "candidates": list(self.candidates),
                "queries": list(self.queries), "scores": {str(k): int(v) for k, v in self.scores.items()}}


@dataclasses.dataclass(frozen=True)
class PerturbationSplit:
    """GEARS simulation split of perturbation conditions.

    Attributes
    ----------
    train, val, test
        Condition strings in GEARS' order; ``train`` ends with ``ctrl``.
    test_subgroup, val_subgroup
        name (:data:`SUBGROUPS`) -> conditions of that subgroup.
    seed
        The seed of the split.
    settings
        ``train_gene_set_size``, ``combo_seen2_train_frac`` (test level) and
        ``val_train_gene_set_size``, ``val_combo_seen2_train_frac`` (0.9, fixed by GEARS).
    reverse
        The reverse-perturbation grid, or None.
    """

    train: list
    val: list
    test: list
    test_subgroup: dict
    val_subgroup: dict
    seed: int
    settings: dict
    reverse: ReverseGrid | None = None

    @property
    def condition_to_split(self) -> dict:
        """condition -> ``train`` / ``val`` / ``test``."""
        out = {}
        for name in _SPLIT_NAMES:
            out.update({c: name for c in getattr(self, name)})
        return out

    @property
    def reverse_genes(self) -> list:
        """The reverse-perturbation grid genes ([] without a grid)."""
        return [] if self.reverse is None else list(self.reverse.genes)

    @property
    def reverse_candidates(self) -> list:
        """The reverse-perturbation candidates ([] without a grid)."""
        return [] if self.reverse is None else list(self.reverse.candidates)

    @property
    def reverse_queries(self) -> list:
        """The reverse-perturbation query conditions ([] without a grid)."""
        return [] if self.reverse is None else list(self.reverse.queries)

    def to_dict(self) -> dict:
        return {
            "gears_version": GEARS_VERSION, "split_type": "simulation", "seed": int(self.seed),
            "settings": dict(self.settings),
            "train": list(self.train), "val": list(self.val), "test": list(self.test),
            "test_subgroup": {k: list(v) for k, v in self.test_subgroup.items()},
            "val_subgroup": {k: list(v) for k, v in self.val_subgroup.items()},
            "reverse": None if self.reverse is None else self.reverse.to_dict(),
        }


# --------------------------------------------------------------------------- GEARS' algorithm
def _is_single(p: str) -> bool:
    # GEARS' own test (substring), kept so the classification is identical
    return CTRL in p and p != CTRL


def _single_gene(p: str) -> str:
    a, b = p.split("+")[:2]
    return b if a == CTRL else a


def _pert_genes(p: str) -> list:
    return [_single_gene(p)] if _is_single(p) else p.split("+")[:2]


def _genes_from_perts(perts: Sequence[str]) -> np.ndarray:
    genes = [g for p in np.unique(np.asarray(perts, dtype=str)) for g in p.split("+") if g != CTRL]
    return np.unique(np.asarray(genes, dtype=str))


def _perts_from_genes(genes, perts: Sequence[str], kind: str) -> list:
    genes = set(genes)
    pool = [p for p in perts if _is_single(p)] if kind == "single" else [p for p in perts if CTRL not in p]
    return [p for p in pool if any(g in genes for g in _pert_genes(p))]


def _gears_simulation(perts: list, train_gene_set_size: float, combo_seen2_train_frac: float,
                      seed: int) -> tuple[list, list, dict]:
    """``DataSplitter.get_simulation_split`` (GEARS 0.0.2), test_set_perts=None."""
    unique_genes = _genes_from_perts(perts)
    rng = np.random.RandomState(seed)  # GEARS: np.random.seed(seed=seed)
    train_genes = rng.choice(unique_genes, int(len(unique_genes) * train_gene_set_size), replace=False)
    train_set = {str(g) for g in train_genes}
    ood_genes = np.setdiff1d(unique_genes, train_genes)

    pert_train = list(_perts_from_genes(train_set, perts, "single"))
    pert_combo = _perts_from_genes(train_set, perts, "combo")
    combo_seen1 = [x for x in pert_combo if sum(t in train_set for t in x.split("+")) == 1]
    pert_combo = np.setdiff1d(pert_combo, combo_seen1)
    rng = np.random.RandomState(seed)  # GEARS reseeds here
    combo_train = rng.choice(pert_combo, int(len(pert_combo) * combo_seen2_train_frac), replace=False)
    combo_seen2 = [str(c) for c in np.setdiff1d(pert_combo, combo_train)]
    unseen_single = _perts_from_genes(ood_genes, perts, "single")
    combo_ood = _perts_from_genes(ood_genes, perts, "combo")
    combo_seen0 = [x for x in combo_ood if sum(t in train_set for t in x.split("+")) == 0]
    pert_train.extend(str(c) for c in combo_train)
    pert_test = combo_seen1 + combo_seen2 + unseen_single + combo_seen0
    assert len(pert_train) + len(pert_test) == len(perts), "GEARS simulation split lost conditions"
    subgroup = {"combo_seen0": combo_seen0, "combo_seen1": combo_seen1, "combo_seen2": combo_seen2,
                "unseen_single": unseen_single}
    return pert_train, pert_test, subgroup


def _unique_perturbations(conditions: Iterable[str]) -> list:
    """Unique non-ctrl conditions in order of first appearance, validated."""
    values = np.asarray(list(conditions), dtype=object)
    perts = [str(p) for p in pd.unique(values) if str(p) != CTRL]
    for p in perts:
        if any(CTRL in g for g in condition_genes(p)):  # condition_genes raises InputError on a malformed string
            raise InputError(f"perturbation condition {p!r}: a gene name containing 'ctrl' cannot be told apart "
                             "from a single by GEARS' split")
    return perts


def simulation_split(conditions: Iterable[str], *, seed: int = 1, train_gene_set_size: float = 0.75,
                     combo_seen2_train_frac: float = 0.75) -> PerturbationSplit:
    """GEARS 0.0.2 simulation split (see the module docstring), draw for draw.

    Parameters
    ----------
    conditions
        (n,) condition strings: per cell, or the obs column's unique values in order of first
        appearance (what ``adata.obs["condition"].unique()`` gives GEARS); only the order of
        first appearance matters. ``ctrl`` is excluded as GEARS does.
    seed
        GEARS' ``seed`` (an int; GEARS' default for Norman is 1).
    train_gene_set_size, combo_seen2_train_frac
        Fractions of genes seen in training and of two-seen-gene combos kept in training.

    Returns
    -------
    :class:`PerturbationSplit` with ``reverse`` None.
    """
    for name, value in (("train_gene_set_size", train_gene_set_size),
                        ("combo_seen2_train_frac", combo_seen2_train_frac)):
        if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
            raise InputError(f"simulation_split: {name}={value!r}; expected a fraction in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"simulation_split: seed={seed!r}; expected a non-negative int")
    perts = _unique_perturbations(conditions)
    if not perts:
        raise InputError("simulation_split: no perturbation besides 'ctrl' in the conditions")
    train, test, test_subgroup = _gears_simulation(perts, float(train_gene_set_size), float(combo_seen2_train_frac),
                                                   int(seed))
    train, val, val_subgroup = _gears_simulation(train, _VAL_FRACTIONS, _VAL_FRACTIONS, int(seed))
    train.append(CTRL)
    settings = {"train_gene_set_size": float(train_gene_set_size), "combo_seen2_train_frac": float(combo_seen2_train_frac),
                "val_train_gene_set_size": _VAL_FRACTIONS, "val_combo_seen2_train_frac": _VAL_FRACTIONS}
    return PerturbationSplit(train=train, val=val, test=test, test_subgroup=test_subgroup, val_subgroup=val_subgroup,
                             seed=int(seed), settings=settings)


# --------------------------------------------------------------------------- per-cell lookups
def split_of_cells(conditions: Sequence[str], split: PerturbationSplit) -> np.ndarray:
    """``train`` / ``val`` / ``test`` of each cell.

    Parameters
    ----------
    conditions
        (n_cells,) condition of each cell.
    split
        The split.

    Returns
    -------
    (n_cells,) str array. A condition the split does not list is an InputError.
    """
    mapping = split.condition_to_split
    values = pd.Series(np.asarray(conditions, dtype=object)).astype(str)
    out = values.map(mapping)
    if out.isna().any():
        unknown = sorted(set(values[out.isna()]))
        raise InputError(f"split_of_cells: conditions {unknown[:5]} ({len(unknown)} in all) are not in the split "
                         f"(seed {split.seed}); was the split made from another dataset?")
    return out.to_numpy(dtype=str)


def subgroup_of(split: PerturbationSplit) -> dict:
    """test condition -> its subgroup name (:data:`SUBGROUPS`)."""
    return {c: name for name in SUBGROUPS for c in split.test_subgroup.get(name, [])}


# --------------------------------------------------------------------------- reverse perturbation
def reverse_grid(conditions: Iterable[str], split: PerturbationSplit, *, n_genes: int = 20,
                 scgpt_single_quirk: bool = True) -> ReverseGrid:
    """The reverse-perturbation gene grid, candidates and queries (scGPT Fig. 3F-G).

    Parameters
    ----------
    conditions
        (n,) conditions present in the data (per cell or unique); each must be in ``split``.
    split
        The simulation split of these conditions.
    n_genes
        Grid size (20 in scGPT / SC-MAMBA2); all eligible genes are kept when fewer exist.
    scgpt_single_quirk
        True: only ``ctrl+A`` singles mark the diagonal, as scGPT's code does (module docstring).

    Returns
    -------
    :class:`ReverseGrid`; empty lists (and a logged warning) when no gene or no query qualifies.
    """
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
        raise InputError(f"reverse_grid: n_genes={n_genes!r}; expected a positive int")
    present = pd.unique(np.asarray(list(conditions), dtype=object).astype(str))
    where = dict(zip(present, split_of_cells(present, split)))  # validates
    test_genes = {g for name in SUBGROUPS for c in split.test_subgroup.get(name, []) for g in condition_genes(c)}
    labels: dict[tuple[str, str], str] = {}
    for name in _SPLIT_NAMES:  # scGPT's order: train, then val, then test overwrite
        for c in (c for c in present if where[c] == name and c != CTRL):
            g0, g1 = c.split("+")
            if g0 == CTRL and g1 in test_genes:
                labels[(g1, g1)] = name
            elif g1 == CTRL:
                if not scgpt_single_quirk and g0 in test_genes:
                    labels[(g0, g0)] = name
            elif g0 in test_genes and g1 in test_genes:
                labels[(g0, g1)] = labels[(g1, g0)] = name
    column: dict[str, list] = {g: [] for g in test_genes}
    for (row, col), name in labels.items():
        column[col].append(name)
    eligible = [g for g, names in column.items() if "train" in names and "test" in names]
    scores = {g: sum(n in ("train", "test") for n in column[g]) for g in eligible}
    ranked = sorted(eligible, key=lambda g: (-scores[g], g))  # tie-break by name (scGPT's is unstable)
    genes = sorted(ranked[: int(n_genes)])
    if len(genes) < n_genes:
        log.warning("reverse_grid: only %d genes of the test subgroups have both train and test conditions "
                    "(%d requested); the grid uses all of them", len(genes), n_genes)
    candidates = [f"{a}+{b}" for a, b in itertools.combinations(genes + [CTRL], 2)]
    grid = set(genes)
    queries = [str(c) for c in np.unique(np.asarray([c for c in present if where[c] == "test"], dtype=str))
               if len(condition_genes(c)) == 2 and set(condition_genes(c)) <= grid]
    if not queries:
        log.warning("reverse_grid: no test combo has both genes in the %d-gene grid; the reverse-perturbation "
                    "task has no query", len(genes))
    return ReverseGrid(n_genes=int(n_genes), genes=genes, candidates=candidates, queries=queries,
                       scores={g: scores[g] for g in genes})


# --------------------------------------------------------------------------- files
def write_split(split: PerturbationSplit, path: str | os.PathLike) -> Path:
    """Write the split (and its ``reverse`` section) as JSON, atomically.

    Keys: ``gears_version`` ("0.0.2"), ``split_type`` ("simulation"), ``seed``, ``settings``,
    ``train``, ``val``, ``test``, ``test_subgroup``, ``val_subgroup``, ``reverse`` (null or
    ``n_genes``, ``genes``, ``candidates``, ``queries``, ``scores``). Returns the path.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(split.to_dict(), indent=1) + "\n")
    return path


def _str_list(value, path, key: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{path}: key {key!r} is {type(value).__name__}; expected a list of condition strings")
    return list(value)


def _subgroups(value, path, key: str) -> dict:
    if not isinstance(value, dict) or set(value) != set(SUBGROUPS):
        got = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise InputError(f"{path}: key {key!r} holds {got}; expected a mapping with keys {list(SUBGROUPS)}")
    return {name: _str_list(value[name], path, f"{key}.{name}") for name in SUBGROUPS}


def read_split(path: str | os.PathLike) -> PerturbationSplit:
    """Read a file written by :func:`write_split`, checking every key (InputError naming file and key)."""
    path = Path(path)
    data = read_json_object(path, what="the split JSON written by write_split", invalid=InputError)
    required = ("gears_version", "split_type", "seed", "settings", "train", "val", "test", "test_subgroup",
                "val_subgroup")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}; expected {list(required) + ['reverse']}")
    if data["gears_version"] != GEARS_VERSION or data["split_type"] != "simulation":
        raise InputError(f"{path}: gears_version {data['gears_version']!r}, split_type {data['split_type']!r}; "
                         f"expected {GEARS_VERSION!r} and 'simulation'")
    if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
        raise InputError(f"{path}: key 'seed' is {data['seed']!r}; expected an int")
    if not isinstance(data["settings"], dict):
        raise InputError(f"{path}: key 'settings' is {type(data['settings']).__name__}; expected an object")
    lists = {k: _str_list(data[k], path, k) for k in _SPLIT_NAMES}
    seen: dict[str, str] = {}
    for name, conds in lists.items():
        for c in conds:
            if c in seen:
                raise InputError(f"{path}: condition {c!r} is in both {seen[c]!r} and {name!r}")
            seen[c] = name
    test_sub = _subgroups(data["test_subgroup"], path, "test_subgroup")
    val_sub = _subgroups(data["val_subgroup"], path, "val_subgroup")
    for key, sub, part in (("test_subgroup", test_sub, "test"), ("val_subgroup", val_sub, "val")):
        extra = sorted({c for v in sub.values() for c in v} - set(lists[part]))
        if extra:
            raise InputError(f"{path}: key {key!r} lists {extra[:5]}, which are not in {part!r}")
    reverse = data.get("reverse")
    if reverse is not None:
        keys = ("n_genes", "genes", "candidates", "queries", "scores")
        if not isinstance(reverse, dict) or any(k not in reverse for k in keys):
            raise InputError(f"{path}: key 'reverse' must be null or an object with keys {list(keys)}")
        if isinstance(reverse["n_genes"], bool) or not isinstance(reverse["n_genes"], int) \
                or not isinstance(reverse["scores"], dict):
            raise InputError(f"{path}: key 'reverse.n_genes' must be an int and 'reverse.scores' an object")
        reverse = ReverseGrid(n_genes=reverse["n_genes"], genes=_str_list(reverse["genes"], path, "reverse.genes"),
                              candidates=_str_list(reverse["candidates"], path, "reverse.candidates"),
                              queries=_str_list(reverse["queries"], path, "reverse.queries"),
                              scores=dict(reverse["scores"]))
    return PerturbationSplit(train=lists["train"], val=lists["val"], test=lists["test"], test_subgroup=test_sub,
                             val_subgroup=val_sub, seed=data["seed"], settings=dict(data["settings"]), reverse=reverse)


def _read_obs_column(path: Path, key: str) -> pd.Series:
    """One obs column of an h5ad file, without reading X."""
    import anndata as ad
    import h5py

    if not path.is_file():
        raise InputError(f"{path}: no such file (expected an .h5ad file with obs {key!r})")
    try:
        with h5py.File(path, "r") as fh:
            if "obs" not in fh:
                raise InputError(f"{path}: no obs group (expected an .h5ad file)")
            obs = ad.io.read_elem(fh["obs"])
    except OSError as exc:
        raise InputError(f"{path}: not a readable h5ad file ({exc})") from exc
    if key not in obs.columns:
        raise InputError(f"{path}: obs has no column {key!r} (perturbation condition); found {list(obs.columns)}")
    return obs[key]


def make_split_file(h5ad_path: str | os.PathLike, out_path: str | os.PathLike, *, seed: int = 1,
                    train_gene_set_size: float = 0.75, combo_seen2_train_frac: float = 0.75,
                    reverse_genes: int = 20, condition_key: str = OBS_CONDITION) -> PerturbationSplit:
    """Make the GEARS simulation split + reverse grid of an h5ad's conditions and write the JSON.

    Parameters
    ----------
    h5ad_path
        Standard-schema h5ad (only obs ``condition_key`` is read).
    out_path
        JSON written atomically by :func:`write_split`.
    seed, train_gene_set_size, combo_seen2_train_frac
        See :func:`simulation_split`.
    reverse_genes
        Grid size of :func:`reverse_grid`.
    condition_key
        obs column of the conditions.

    Returns
    -------
    The split written (with ``reverse``).
    """
    h5ad_path = Path(h5ad_path)
    conditions = _read_obs_column(h5ad_path, condition_key).astype(str)
    try:
        split = simulation_split(conditions.to_numpy(), seed=seed, train_gene_set_size=train_gene_set_size,
                                 combo_seen2_train_frac=combo_seen2_train_frac)
    except InputError as exc:
        raise InputError(f"{h5ad_path}: obs[{condition_key!r}]: {exc}") from exc
    split = dataclasses.replace(split, reverse=reverse_grid(conditions.to_numpy(), split, n_genes=reverse_genes))
    write_split(split, out_path)
    sizes = {name: len(split.test_subgroup[name]) for name in SUBGROUPS}
    log.info("%s: simulation split seed %d: %d train / %d val / %d test conditions; test subgroups %s; reverse grid "
             "%d genes, %d candidates, %d queries -> %s", h5ad_path, split.seed, len(split.train), len(split.val),
             len(split.test), sizes, len(split.reverse.genes), len(split.reverse.candidates),
             len(split.reverse.queries), out_path)
    return split

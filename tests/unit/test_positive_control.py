"""benchmarks/positive_control.py at tiny size on CPU: the outputs are well formed. Whether the
pretrained model beats the scratch one is measured at d512 on a GPU, never asserted here."""
from __future__ import annotations

import functools
import importlib.util
import itertools
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "positive_control.py"
RECIPE, SEEDS, FRACTIONS = "scmamba2", (0, 1), (0.01, 0.1, 1.0)


@functools.cache
def _module():
    spec = importlib.util.spec_from_file_location("positive_control", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("positive_control") / "positive_control_cpu_test.csv"
    work = out.parent / "work"
    _module().main(["--size", "tiny", "--device", "cpu", "--recipes", RECIPE, "--seeds", *map(str, SEEDS),
                    "--corpus-cells", "1500", "--labelled-cells", "450", "--work", str(work), "--out", str(out)])
    return out, work


def test_the_csv_has_every_run_and_well_formed_scores(tiny_run):
    out, _ = tiny_run
    table = pd.read_csv(out)
    assert list(table.columns) == _module().COLUMNS
    models = table[table.recipe != "logreg"]
    want = set(itertools.product([RECIPE], ["pretrained", "scratch"], ["finetune", "probe"], FRACTIONS, SEEDS))
    got = list(zip(models.recipe, models.init, models.readout, models.label_fraction, models.seed))
    assert len(got) == len(set(got)) and set(got) == want
    baseline = table[table.recipe == "logreg"]
    assert (baseline.init == "baseline").all() and (baseline.readout == "genes").all()
    assert sorted(zip(baseline.label_fraction, baseline.seed)) == sorted(itertools.product(FRACTIONS, SEEDS))
    for metric in ("accuracy", "f1_macro"):
        assert table[metric].between(0, 1).all() and table[metric].notna().all()
    # the query is the same 150 cells for every run; the labelled cells grow with the fraction
    assert (table.n_query == 150).all() and (table.n_classes == 10).all()
    for seed, g in table.groupby("seed"):
        n = g.groupby("label_fraction").n_labelled
        assert (n.nunique() == 1).all(), "every arm and readout sees the same labelled cells"
        assert n.first().is_monotonic_increasing and n.first().is_unique
    assert (table.loc[table.label_fraction == 1.0, "n_labelled"] == 300).all()  # 2/3 of 450 cells
    assert (table.loc[table.label_fraction == 0.01, "n_labelled"] == 10).all()  # one cell of each class
    # the settings and the pretraining that every model row came from
    assert (models.d_model == 32).all() and (models.corpus_cells == 1500).all() and (models.pretrain_steps == 30).all()
    assert np.isfinite(models.pretrain_loss_final).all()
    tuned = models[models.readout == "finetune"]
    assert (tuned.finetune_steps >= 6).all() and models.loc[models.readout == "probe", "finetune_steps"].isna().all()
    pairs = tuned.pivot_table(index=["label_fraction", "seed"], columns="init", values="finetune_steps")
    assert (pairs.pretrained == pairs.scratch).all()  # identical settings for both arms
    assert baseline.d_model.isna().all()
    assert table.device.str.startswith("cpu").all() and table.torch_version.notna().all()
    assert table.date.notna().all() and (table["size"] == "tiny").all()


def test_the_plot_lies_beside_the_csv_and_the_work_dir_keeps_the_corpus(tiny_run):
    out, work = tiny_run
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (work / "tokens" / "binned" / "manifest.json").is_file()
    assert (work / "pretrain" / RECIPE / "model" / "model.safetensors").is_file()
    assert not (work / "finetune").exists() or not any((work / "finetune").iterdir())  # removed once scored


def test_labelled_draws_are_stratified_with_every_class_and_reproducible():
    pick = _module().pick_labelled
    labels = np.array(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    small = pick(labels, 0.01, 0)
    assert sorted(set(labels[small])) == ["a", "b", "c"] and len(small) == 3  # one per class beats round(1)
    tenth = pick(labels, 0.1, 0)
    assert len(tenth) == 10 and pd.Series(labels[tenth]).value_counts().to_dict() == {"a": 6, "b": 3, "c": 1}
    assert np.array_equal(tenth, pick(labels, 0.1, 0))
    assert not np.array_equal(pick(labels, 0.5, 0), pick(labels, 0.5, 1))
    assert np.array_equal(pick(labels, 1.0, 3), np.arange(100))


def test_the_design_crosses_types_of_shared_programs_with_independent_states():
    design = _module().program_design()
    assert design.profiles.shape == (80, 765) and len(set(design.state_type.values())) == 10
    genes = [g for p in design.programs.values() for g in p]
    assert len(genes) == len(set(genes)) == 11 * 20  # disjoint programs
    pairs = list(design.type_programs.values())
    assert len(set(pairs)) == 10 and all(len(set(p)) == 2 for p in pairs)
    uses = pd.Series([k for p in pairs for k in p]).value_counts()
    assert uses.max() >= 2  # programs are shared between types: no single program names a type
    # a state program raises its genes by the fold in every type, an identity program only in its types
    P = design.profiles
    g = design.programs["state0"][0]
    assert np.isclose(P.loc["T0|100", g] / P.loc["T0|000", g], 2.5)

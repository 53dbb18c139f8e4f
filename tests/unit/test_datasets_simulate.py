"""The integration simulator: its ground truth is what it says it is."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellmamba.datasets import (UNS_SIMULATION, VARM_BATCH_FACTOR, pbmc68k_profiles, read_dataset,
                                simulate_integration, validate_standard)
from cellmamba.errors import InputError
from cellmamba.genes import map_symbols, read_gene_table


@pytest.fixture(scope="module")
def profiles():
    """3 cell types x 30 genes: a shared background plus 10 marker genes per type (10x higher)."""
    base = np.ones((3, 30))
    for t in range(3):
        base[t, 10 * t: 10 * (t + 1)] = 10.0
    return pd.DataFrame(base, index=["alpha", "beta", "gamma"], columns=[f"G{i}" for i in range(30)])


@pytest.fixture(scope="module")
def sim(profiles):
    return simulate_integration(n_cells=6000, n_batches=2, seed=3, profiles=profiles, library_size=3000.0,
                                library_sd=0.2, batch_library_sd=0.5, batch_effect_sd=0.5, dispersion=10.0,
                                composition_alpha=2.0)


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def test_schema_and_counts(sim):
    validate_standard(sim, "integration")
    X = _dense(sim.X)
    assert np.all(X == np.round(X)) and X.min() >= 0
    assert np.array_equal(_dense(sim.layers["counts"]), X)
    info = sim.uns["cellmamba"]
    assert info["x_kind"] == "counts" and info["simulated"] is True
    params = info[UNS_SIMULATION]
    assert params["seed"] == 3 and params["n_batches"] == 2 and params["batch_effect_sd"] == 0.5
    assert params["cell_types"] == ["alpha", "beta", "gamma"]
    assert sim.varm[VARM_BATCH_FACTOR].shape == (30, 2)
    assert list(sim.obs["batch"].cat.categories) == ["batch0", "batch1"]
    assert list(sim.var["gene_name"]) == [f"G{i}" for i in range(30)]


def test_deterministic_under_seed(profiles):
    a = simulate_integration(n_cells=200, n_batches=3, seed=5, profiles=profiles)
    b = simulate_integration(n_cells=200, n_batches=3, seed=5, profiles=profiles)
    c = simulate_integration(n_cells=200, n_batches=3, seed=6, profiles=profiles)
    assert (a.X != b.X).nnz == 0 and list(a.obs["cell_type"]) == list(b.obs["cell_type"])
    assert (a.X != c.X).nnz > 0


def test_cell_type_signal_is_the_profile(sim, profiles):
    """Per-type means, library- and batch-corrected with the known truth, recover the profile rows."""
    X = _dense(sim.X)
    F = sim.varm[VARM_BATCH_FACTOR].T                       # (n_batches, n_genes)
    batch = sim.obs["batch"].cat.codes.to_numpy()
    lib = sim.obs["true_library_size"].to_numpy()
    rates = X / lib[:, None] / F[batch]
    P = profiles.to_numpy() / profiles.to_numpy().sum(axis=1, keepdims=True)
    means = np.vstack([rates[sim.obs["cell_type"] == t].mean(axis=0) for t in profiles.index])
    np.testing.assert_allclose(means, P, rtol=0.1)
    # the types differ far more than the noise: nearest-profile assignment of normalised cells is near perfect
    norm = X / X.sum(axis=1, keepdims=True)
    guess = np.argmin(((norm[:, None, :] - P[None]) ** 2).sum(axis=2), axis=1)
    truth = sim.obs["cell_type"].cat.codes.to_numpy()
    assert (guess == truth).mean() > 0.95


def test_batch_factors_are_applied(sim):
    """Within a cell type, the batch-1 / batch-0 ratio of library-normalised means is F1 / F0."""
    X = _dense(sim.X)
    F = sim.varm[VARM_BATCH_FACTOR].T
    lib = sim.obs["true_library_size"].to_numpy()
    tested = 0
    for t in ("alpha", "beta", "gamma"):
        m = [X[(sim.obs["cell_type"] == t).to_numpy() & (sim.obs["batch"] == f"batch{b}").to_numpy()] for b in (0, 1)]
        l0 = lib[(sim.obs["cell_type"] == t).to_numpy() & (sim.obs["batch"] == "batch0").to_numpy()]
        l1 = lib[(sim.obs["cell_type"] == t).to_numpy() & (sim.obs["batch"] == "batch1").to_numpy()]
        if min(len(l0), len(l1)) < 200:
            continue
        observed = (m[1].sum(axis=0) / l1.sum()) / (m[0].sum(axis=0) / l0.sum())
        np.testing.assert_allclose(observed, F[1] / F[0], rtol=0.12)
        tested += 1
    assert tested >= 2
    # and the factors are not trivially one: there is a batch effect to remove
    assert np.std(np.log(F)) > 0.3


def test_library_shift_and_composition(sim):
    params = sim.uns["cellmamba"][UNS_SIMULATION]
    lib = sim.obs["true_library_size"]
    for b, factor in enumerate(params["batch_library_factor"]):
        in_batch = sim.obs["batch"] == f"batch{b}"
        expected = params["library_size"] * factor
        assert abs(lib[in_batch].mean() / expected - 1) < 0.03
        observed = sim.obs.loc[in_batch, "cell_type"].value_counts(normalize=True).reindex(params["cell_types"])
        np.testing.assert_allclose(observed.to_numpy(), params["composition"][b], atol=0.04)
    composition = np.asarray(params["composition"])
    assert np.abs(composition[0] - composition[1]).max() > 0.05  # the batches' mixtures differ


def test_default_profiles_are_real_genes(repo_root):
    P = pbmc68k_profiles()
    assert P.shape == (10, 765)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    table = read_gene_table(repo_root / "resources" / "genes" / "cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    mapping = map_symbols(P.columns, table, source="pbmc68k_reduced")
    assert mapping.n_mapped / len(P.columns) > 0.9


def test_reader_and_validation(tmp_path):
    adata = read_dataset("sim_integration", {}, task="integration", keys={"label_key": "cell_type", "batch_key": "batch"},
                         x_kind="counts", options={"n_cells": 300, "n_batches": 3, "seed": 0})
    assert adata.shape == (300, 765) and adata.uns["cellmamba"]["simulated"] is True
    assert adata.obs["cell_type"].nunique() > 3
    adata.write_h5ad(tmp_path / "sim.h5ad")
    with pytest.raises(InputError, match="n_batches"):
        simulate_integration(n_cells=10, n_batches=1)
    with pytest.raises(InputError, match="dispersion"):
        simulate_integration(n_cells=10, n_batches=2, dispersion=0.0)
    with pytest.raises(InputError, match="keys.label_key"):
        read_dataset("sim_integration", {}, task="integration", keys={"label_key": "celltype"})

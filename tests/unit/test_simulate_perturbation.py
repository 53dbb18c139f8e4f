"""The perturbation simulator: GEARS' file layout, and its ground truth is what it says it is."""
from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import pandas as pd
import pytest

from _gears_ref import load_gears_data_utils
from cellmamba.datasets.gears_split import simulation_split
from cellmamba.datasets.readers import read_norman
from cellmamba.datasets.simulate_perturbation import UNS_PERT_SIMULATION, simulate_perturbation
from cellmamba.errors import InputError

SMALL = dict(n_perturbed_genes=6, n_combos=8, cells_per_condition=12, n_ctrl=60, n_genes=80)


@pytest.fixture(scope="module")
def sim():
    """The demo's default size (1,500 cells x 300 genes)."""
    return simulate_perturbation(seed=0)


@pytest.fixture(scope="module")
def small():
    return simulate_perturbation(seed=4, **SMALL)


def _dense(X):
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def _truth(adata) -> tuple[dict, dict]:
    s = adata.uns[UNS_PERT_SIMULATION]
    delta = {str(c): np.asarray(d) for c, d in zip(s["conditions"], s["delta"])}
    single = {}
    for c, d in delta.items():
        parts = c.split("+")
        if "ctrl" in parts:
            single[parts[0] if parts[1] == "ctrl" else parts[1]] = d
    return delta, single


def test_deterministic_and_seeded(small):
    again = simulate_perturbation(seed=4, **SMALL)
    assert np.array_equal(_dense(again.layers["counts"]), _dense(small.layers["counts"]))
    assert np.array_equal(_dense(again.X), _dense(small.X))
    assert again.obs.equals(small.obs)
    assert np.array_equal(again.uns[UNS_PERT_SIMULATION]["delta"], small.uns[UNS_PERT_SIMULATION]["delta"])
    other = simulate_perturbation(seed=5, **SMALL)
    assert not np.array_equal(other.uns[UNS_PERT_SIMULATION]["delta"], small.uns[UNS_PERT_SIMULATION]["delta"])
    assert not np.array_equal(_dense(other.layers["counts"]), _dense(small.layers["counts"]))


def test_gears_layout(sim):
    obs = sim.obs
    assert list(obs.columns) == ["condition", "cell_type", "dose_val", "control", "condition_name"]
    cond = obs["condition"].astype(str).to_numpy()
    assert isinstance(obs["condition"].dtype, pd.CategoricalDtype) and obs["cell_type"].nunique() == 1
    singles = [c for c in set(cond) if "ctrl" in c.split("+") and c != "ctrl"]
    assert any(c.startswith("ctrl+") for c in singles) and any(c.endswith("+ctrl") for c in singles)
    assert len(singles) == 10 and len(set(cond)) == 1 + 10 + 30 and sim.n_obs == 1500
    assert ((obs["dose_val"].astype(str) == "1") == (cond == "ctrl")).all()
    assert ((obs["control"] == 1) == (cond == "ctrl")).all()
    expected = [f"{t}_{c}_{d}" for t, c, d in zip(obs["cell_type"].astype(str), cond, obs["dose_val"].astype(str))]
    assert (obs["condition_name"].astype(str).to_numpy() == np.array(expected)).all()
    # X = log1p(counts / total * median total): the formula by hand
    counts = _dense(sim.layers["counts"]).astype(np.float64)
    assert (counts == np.round(counts)).all() and counts.min() >= 0
    total = counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_dense(sim.X), np.log1p(counts / total * np.median(total)), rtol=1e-5, atol=1e-5)
    assert sim.X.dtype == np.float32 and sim.X.format == "csr"
    # genes: real symbols from pbmc68k_reduced
    import scanpy as sc

    assert set(sim.var_names) <= set(sc.datasets.pbmc68k_reduced().raw.var_names)
    assert (sim.var["gene_name"] == sim.var_names).all()
    # uns: one ranking per non-ctrl condition_name, over all genes; top-20 lists drawn from it
    ranked = sim.uns["rank_genes_groups_cov_all"]
    names = set(obs["condition_name"].astype(str)) - {"K562_ctrl_1"}
    assert set(ranked) == names and all(sorted(v) == sorted(sim.var_names) for v in ranked.values())
    for key in ("top_non_dropout_de_20", "top_non_zero_de_20"):
        assert set(sim.uns[key]) == names and all(len(v) == 20 for v in sim.uns[key].values())
    info = sim.uns["cellmamba"]
    assert info["x_kind"] == "other" and info["simulated"] is True and sim.uns[UNS_PERT_SIMULATION]["simulated"]


def test_read_norman_accepts_it(small, tmp_path):
    path = tmp_path / "perturb_processed.h5ad"
    small.write_h5ad(path)
    adata = read_norman({"h5ad": path}, keys={"condition_key": "condition", "gene_name_key": "gene_name"})
    assert (adata.obs["condition"].astype(str) == small.obs["condition"].astype(str)).all()
    assert adata.uns["cellmamba"]["x_kind"] == "other" and "counts" in adata.layers
    # the ground truth survives the reader (it lives outside uns["cellmamba"], which the reader rewrites)
    assert adata.uns[UNS_PERT_SIMULATION]["simulated"]
    np.testing.assert_array_equal(adata.uns[UNS_PERT_SIMULATION]["delta"], small.uns[UNS_PERT_SIMULATION]["delta"])


def test_combos_additive_or_not(sim):
    s = sim.uns[UNS_PERT_SIMULATION]
    delta, single = _truth(sim)
    kinds = {str(k): str(v) for k, v in s["combo_type"].items()}
    assert set(kinds.values()) == {"additive", "synergy", "buffering"}
    assert sum(v != "additive" for v in kinds.values()) == round(0.35 * 30)
    for combo, kind in kinds.items():
        a, b = combo.split("+")
        additive = single[a] + single[b]
        if kind == "additive":
            np.testing.assert_allclose(delta[combo], additive, atol=1e-12)
        else:
            assert np.abs(delta[combo] - additive).max() > 0.1
        if kind == "buffering":
            np.testing.assert_allclose(delta[combo], 0.5 * additive, atol=1e-12)
    # hand check of one additive combo, gene by gene
    combo = next(c for c, k in kinds.items() if k == "additive")
    a, b = combo.split("+")
    g = int(np.argmax(np.abs(delta[combo])))
    assert delta[combo][g] == pytest.approx(single[a][g] + single[b][g])


def test_grn_propagation(sim):
    """Each single's truth = its shock pushed through the GRN edges, by a naive loop; genes that
    the target cannot reach do not move, its direct targets do."""
    s = sim.uns[UNS_PERT_SIMULATION]
    genes = list(sim.var_names)
    pos = {g: i for i, g in enumerate(genes)}
    src = [pos[g] for g in s["grn_source"]]
    dst = [pos[g] for g in s["grn_target"]]
    children = {i: [] for i in range(len(genes))}
    for i, j, w in zip(src, dst, s["grn_weight"]):
        children[i].append((j, float(w)))
    order = [pos[g] for g in s["topological_order"]]
    rank = {g: k for k, g in enumerate(order)}
    assert all(rank[i] < rank[j] for i, j in zip(src, dst))  # a DAG along the stored order
    _, single = _truth(sim)
    for gene, shock in zip(s["perturbed_genes"], s["single_shock"]):
        t = pos[str(gene)]
        naive = np.zeros(len(genes))
        naive[t] = shock
        for i in order:  # parents before children
            for j, w in children[i]:
                naive[j] += naive[i] * w
        np.testing.assert_allclose(single[str(gene)], naive, atol=1e-10)
        reach, queue = {t}, deque([t])
        while queue:
            for j, _ in children[queue.popleft()]:
                if j not in reach:
                    reach.add(j)
                    queue.append(j)
        moved = set(np.flatnonzero(np.abs(single[str(gene)]) > 1e-12))
        assert moved <= reach and len(children[t]) > 0
        assert all(abs(single[str(gene)][j]) > 1e-6 for j, _ in children[t])
        assert np.all(single[str(gene)][sorted(set(range(len(genes))) - reach)] == 0.0)


def test_measured_delta_tracks_truth(sim):
    s = sim.uns[UNS_PERT_SIMULATION]
    X = _dense(sim.X).astype(np.float64)
    cond = sim.obs["condition"].astype(str).to_numpy()
    ctrl = X[cond == "ctrl"].mean(axis=0)
    top = np.argsort(-ctrl)[:100]
    r = []
    for c, truth in zip(s["conditions"], s["delta_normalized"]):
        measured = X[cond == c].mean(axis=0) - ctrl
        r.append(np.corrcoef(measured[top], np.asarray(truth)[top])[0, 1])
    r = np.array(r)
    assert np.median(r[:10]) > 0.6 and r[:10].min() > 0.4, r  # singles
    assert np.median(r[10:]) > 0.6, r  # combos
    # a shuffled truth does not correlate: the check can fail
    rng = np.random.default_rng(0)
    shuffled = [np.corrcoef(X[cond == c].mean(axis=0)[top] - ctrl[top], rng.permutation(np.asarray(t)[top]))[0, 1]
                for c, t in zip(s["conditions"][:10], s["delta_normalized"][:10])]
    assert abs(np.median(shuffled)) < 0.3


def test_gears_split_on_simulated_conditions(sim):
    split = simulation_split(sim.obs["condition"].unique(), seed=1)
    sizes = {k: len(v) for k, v in split.test_subgroup.items()}
    assert all(sizes[k] > 0 for k in ("combo_seen0", "combo_seen1", "combo_seen2", "unseen_single")), sizes


def test_uns_equals_gears_own_functions(small):
    data_utils = load_gears_data_utils("_gears_ref_stub_sim", needed_for="get_DE_genes")
    ref = small.copy()
    ref.obs = ref.obs[["condition", "cell_type"]].astype(str).copy()
    for key in list(ref.uns):
        del ref.uns[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = data_utils.get_DE_genes(ref)
        ref = data_utils.get_dropout_non_zero_genes(ref)
    for col in ("dose_val", "condition_name"):
        assert (ref.obs[col].astype(str).to_numpy() == small.obs[col].astype(str).to_numpy()).all()
    assert (ref.obs["control"].to_numpy() == small.obs["control"].to_numpy()).all()
    ranked = ref.uns["rank_genes_groups_cov_all"]
    assert set(ranked) == set(small.uns["rank_genes_groups_cov_all"])
    for name, genes in ranked.items():
        assert list(genes) == list(small.uns["rank_genes_groups_cov_all"][name])
        for key in ("top_non_dropout_de_20", "top_non_zero_de_20", "non_zeros_gene_idx", "non_dropout_gene_idx"):
            assert list(ref.uns[key][name]) == list(small.uns[key][name]), (key, name)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_perturbed_genes=4, n_combos=7), "n_combos=7"),
    (dict(cell_type="K562_x"), "cell_type"),
    (dict(effect_size=-1.0), "effect_size"),
    (dict(n_genes=5000), "n_genes"),
    (dict(n_ctrl=1.5), "n_ctrl"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(InputError, match=match):
        simulate_perturbation(**{**SMALL, **kwargs})

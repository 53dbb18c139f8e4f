"""The paired RNA + ATAC simulator: BMMC multiome layout, and its ground truth is what it says."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.datasets import read_bmmc
from cellmamba.datasets.simulate_multiome import simulate_multiome, write_simulated_multiome
from cellmamba.errors import InputError

POSITIONS = Path(__file__).resolve().parents[2] / "resources" / "genes" / "human_gene_positions_hg38.tsv.gz"
KEYS = {"label_key": "cell_type", "batch_key": "batch", "feature_type_key": "feature_types", "gene_id_key": "gene_id",
        "donor_key": "DonorID"}


@pytest.fixture(scope="module")
def sim():
    return simulate_multiome(n_cells=600, n_batches=2, seed=7)


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def _blocks(adata):
    gex = (adata.var["feature_types"] == "GEX").to_numpy()
    return gex, ~gex


def test_layout_is_bmmc_multiome(sim):
    gex, atac = _blocks(sim)
    assert set(sim.var["feature_types"]) == {"GEX", "ATAC"}
    assert np.flatnonzero(gex).max() < np.flatnonzero(atac).min()            # GEX first, then ATAC
    assert sim.var["gene_id"][gex].str.match(r"^ENSG\d{11}$").all()
    assert (sim.var["gene_id"][atac] == sim.var_names[atac]).all()           # peaks: gene_id = name
    assert pd.Index(sim.var_names[atac]).str.match(r"^chr([1-9]|1\d|2[0-2]|X|Y)-\d+-\d+$").all()
    counts = _dense(sim.layers["counts"])
    assert np.all(counts == np.round(counts)) and counts.min() >= 0
    # X: log1p(normalize_total 1e4) of each block separately, checked against scanpy
    import anndata as ad
    import scanpy as sc
    for block in (gex, atac):
        ref = ad.AnnData(sp.csr_matrix(counts[:, block]))
        sc.pp.normalize_total(ref, target_sum=1e4)
        sc.pp.log1p(ref)
        np.testing.assert_allclose(_dense(sim.X)[:, block], _dense(ref.X), rtol=1e-5, atol=1e-5)
    assert set(sim.obs["batch"]) == {"s1d1", "s1d2"}
    assert sim.obs["DonorID"].dtype.kind == "i" and set(sim.obs["Site"]) == {"site1"}
    assert sim.obs["cell_type"].nunique() == 10
    truth = sim.uns["simulation"]
    assert truth["simulated"] is True and truth["seed"] == 7
    assert truth["profiles"].shape == (10, int(gex.sum()))
    assert (sim.var["linked_gene"][gex] == "").all()
    kinds = sim.var["peak_kind"][atac].astype(str)
    assert set(kinds) == {"promoter", "distal", "background"}
    assert (sim.var["linked_gene"][atac][kinds == "background"] == "").all()
    assert (kinds == "background").sum() == 200


def test_deterministic_per_seed():
    a = simulate_multiome(n_cells=80, seed=3)
    b = simulate_multiome(n_cells=80, seed=3)
    c = simulate_multiome(n_cells=80, seed=4)
    assert (a.var_names == b.var_names).all() and (a.obs_names == b.obs_names).all()
    assert (_dense(a.layers["counts"]) == _dense(b.layers["counts"])).all()
    assert a.obs["cell_type"].equals(b.obs["cell_type"])
    assert not (a.var_names.equals(c.var_names) and np.array_equal(_dense(a.layers["counts"]),
                                                                    _dense(c.layers["counts"])))


def test_reader_accepts_the_written_file(tmp_path):
    path = tmp_path / "multiome.h5ad"
    written = write_simulated_multiome(path, n_cells=120, seed=1)
    adata = read_bmmc({"h5ad": path}, keys=KEYS)
    assert adata.shape == written.shape
    assert dict(adata.var["modality"].value_counts()) == {"atac": int((written.var["feature_types"] == "ATAC").sum()),
                                                          "rna": int((written.var["feature_types"] == "GEX").sum())}
    assert set(adata.obs["modality"]) == {"atac+rna"}
    assert (adata.obs["cell_type"].astype(str) == written.obs["cell_type"].astype(str)).all()
    assert adata.uns["simulation"]["simulated"]
    assert not list(tmp_path.glob(".*tmp*"))                                  # atomic write left nothing behind


def test_peaks_lie_near_their_gene(sim):
    table = pd.read_csv(POSITIONS, sep="\t", dtype=str, keep_default_na=False)
    table = table[table["ensembl_ids"] != ""].drop_duplicates("symbol").set_index("symbol")
    gex, atac = _blocks(sim)
    # GEX gene ids: the table's (first) Ensembl id of the symbol
    first_id = table.loc[sim.var_names[gex], "ensembl_ids"].str.split(";").str[0]
    assert (first_id.to_numpy() == sim.var["gene_id"][gex].to_numpy()).all()
    peaks = sim.var[atac]
    linked = peaks[peaks["peak_kind"].astype(str) != "background"]
    parts = pd.Series(linked.index).str.extract(r"^chr(\w+)-(\d+)-(\d+)$")
    rows = table.loc[linked["linked_gene"].astype(str)]
    assert (parts[0].to_numpy() == rows["chromosome"].to_numpy()).all()      # same chromosome
    start, end = parts[1].astype(int).to_numpy(), parts[2].astype(int).to_numpy()
    assert (end > start).all() and ((end - start) >= 300).all() and ((end - start) <= 900).all()
    tss = np.where(rows["strand"] == "+", rows["start"].astype(int), rows["end"].astype(int))
    centre = (start + end) / 2
    promoter = (linked["peak_kind"] == "promoter").to_numpy()
    dist = np.abs(centre - tss)
    assert np.median(dist[promoter]) < 300 and (dist[promoter] < 5_000).all()
    assert (dist[~promoter] < 60_000).all() and np.median(dist[~promoter]) > 2_000
    # every linked gene has 1-3 peaks, exactly one of them its promoter peak
    per_gene = linked.groupby(linked["linked_gene"].astype(str), observed=True).size()
    assert per_gene.between(1, 3).all() and len(per_gene) == int(gex.sum())
    assert linked["linked_gene"][promoter].astype(str).is_unique
    # the peak set is disjoint (a merged peak set), in genomic order within each chromosome
    allp = pd.Series(peaks.index).str.extract(r"^chr(\w+)-(\d+)-(\d+)$")
    for _, grp in allp.groupby(0):
        s, e = grp[1].astype(int).to_numpy(), grp[2].astype(int).to_numpy()
        assert (np.diff(s) > 0).all() and (s[1:] > e[:-1]).all()


def test_linked_peaks_follow_their_gene_background_peaks_do_not(sim):
    gex, atac = _blocks(sim)
    counts = _dense(sim.layers["counts"])
    rna = counts[:, gex]
    lognorm = np.log1p(rna / rna.sum(axis=1, keepdims=True) * 1e4)
    types = sim.obs["cell_type"].astype(str).to_numpy()
    cats = np.unique(types)
    # ATAC counts per unit of the cell's recorded depth: a background peak's expectation is then
    # the same in every type (raw means would all share the types' depth pattern)
    per_depth = counts[:, atac] / sim.obs["true_atac_depth"].to_numpy()[:, None]
    rna_mean = np.vstack([lognorm[types == t].mean(axis=0) for t in cats])             # (types, genes)
    atac_mean = np.vstack([per_depth[types == t].mean(axis=0) for t in cats])          # (types, peaks)
    genes = pd.Index(sim.var_names[gex])
    linked_gene = sim.var["linked_gene"][atac].astype(str).to_numpy()
    is_linked = linked_gene != ""

    def corr(a, b):
        a, b = a - a.mean(axis=0), b - b.mean(axis=0)
        return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))

    r_linked = corr(atac_mean[:, is_linked], rna_mean[:, genes.get_indexer(linked_gene[is_linked])])
    rng = np.random.default_rng(0)
    random_genes = rng.integers(0, len(genes), size=int((~is_linked).sum()))
    r_background = corr(atac_mean[:, ~is_linked], rna_mean[:, random_genes])
    # also linked peaks against a random gene: the link, not the peak, carries the correlation
    r_shuffled = corr(atac_mean[:, is_linked], rna_mean[:, rng.integers(0, len(genes), size=int(is_linked.sum()))])
    # 10 types: under no association r has sd ~1/3 and P(r > 0.6) ~ 0.03
    assert np.median(r_linked) > 0.6 and np.mean(r_linked > 0.6) > 0.7
    assert abs(np.median(r_background)) < 0.15 and np.mean(r_background > 0.6) < 0.1
    assert abs(np.median(r_shuffled)) < 0.15 and np.mean(r_shuffled > 0.6) < 0.1
    from scipy.stats import mannwhitneyu
    assert mannwhitneyu(r_linked, r_background, alternative="greater").pvalue < 1e-20


def test_atac_counts_follow_the_recorded_parameters(sim):
    """Per-type mean counts = sigmoid(a + b z[type, gene]) x mean depth of the type's cells."""
    gex, atac = _blocks(sim)
    truth = sim.uns["simulation"]
    types = sim.obs["cell_type"].astype(str).to_numpy()
    cats = list(truth["cell_types"])
    genes = pd.Index(sim.var_names[gex])
    a = sim.var["accessibility_intercept"][atac].to_numpy()
    b = sim.var["accessibility_slope"][atac].to_numpy()
    linked = sim.var["linked_gene"][atac].astype(str).to_numpy()
    z = np.asarray(truth["z"])
    zz = np.where(linked != "", z[:, np.maximum(genes.get_indexer(linked), 0)], 0.0)     # (types, peaks)
    p = 1 / (1 + np.exp(-(a + b * zz)))
    depth = sim.obs["true_atac_depth"].to_numpy()
    counts = _dense(sim.layers["counts"])[:, atac]
    observed = np.vstack([counts[types == t].sum(axis=0) for t in cats])
    expected = np.vstack([p[i] * depth[types == t].sum() for i, t in enumerate(cats)])
    assert np.corrcoef(observed.ravel(), expected.ravel())[0, 1] > 0.95
    assert abs(observed.sum() / expected.sum() - 1) < 0.02                  # Poisson total, ~100k counts


def test_cell_types_recoverable_from_each_modality(sim):
    from sklearn.decomposition import PCA
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    gex, atac = _blocks(sim)
    y = sim.obs["cell_type"].astype(str).to_numpy()
    chance = pd.Series(y).value_counts(normalize=True).max()
    for block in (gex, atac):
        Z = PCA(n_components=20, random_state=0).fit_transform(_dense(sim.X)[:, block])
        acc = cross_val_score(KNeighborsClassifier(n_neighbors=15), Z, y, cv=5).mean()
        assert acc > max(0.7, 3 * chance)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_batches": 1}, "n_batches"),
    ({"peaks_per_gene": (3, 1)}, "peaks_per_gene"),
    ({"atac_depth": 0.0}, "atac_depth"),
    ({"seed": -1}, "seed"),
    ({"positions": "/nonexistent/positions.tsv.gz"}, "no such file"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        simulate_multiome(n_cells=20, **kwargs)


def test_positions_table_without_required_columns(tmp_path):
    bad = tmp_path / "pos.tsv"
    bad.write_text("symbol\tchromosome\tstart\nCD3E\t11\t118304\n")
    with pytest.raises(InputError, match=re.escape("missing column(s)")):
        simulate_multiome(n_cells=20, positions=bad)


def test_no_peaks_is_an_error():
    with pytest.raises(InputError, match="no peak"):
        simulate_multiome(n_cells=20, peaks_per_gene=(0, 0), n_background_peaks=0)

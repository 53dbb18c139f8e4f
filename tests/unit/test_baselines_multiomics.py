"""PCA + CCA multi-omics baseline and the per-modality normalisation shared with the models."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.baselines.multiomics import canonical_correlations, modality_matrices, pca_cca, run_multiomics_baseline
from cellmamba.datasets import read_bmmc
from cellmamba.errors import InputError
from cellmamba.metrics.foscttm import foscttm
from cellmamba.normalisation import clr_per_cell, log_normalise

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DSB_ADT = SHARED_DATA / "real" / "dsb_citeseq_adt_cells.h5ad"
KEYS = {"label_key": "cell_type", "batch_key": "batch", "feature_type_key": "feature_types", "gene_id_key": "gene_id",
        "donor_key": "DonorID"}


def _correlated(n=400, p1=30, p2=25, rank=4, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank))
    x1 = z @ rng.normal(size=(rank, p1)) + noise * rng.normal(size=(n, p1))
    x2 = z @ rng.normal(size=(rank, p2)) + noise * rng.normal(size=(n, p2))
    return x1, x2


def _numpy_cca(x1, x2, n_pcs):
    """Independent reference: top PCs by a full SVD, then SVD of S11^-1/2 S12 S22^-1/2 (eigh roots)."""
    def pcs(x):
        xc = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        return u[:, :n_pcs] * s[:n_pcs]

    def inv_sqrt(c):
        w, v = np.linalg.eigh(c)
        return v @ np.diag(w ** -0.5) @ v.T

    a, b = pcs(x1), pcs(x2)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    n = a.shape[0]
    s11, s22, s12 = a.T @ a / (n - 1), b.T @ b / (n - 1), a.T @ b / (n - 1)
    return np.linalg.svd(inv_sqrt(s11) @ s12 @ inv_sqrt(s22), compute_uv=False)


def test_canonical_correlations_match_numpy_reference():
    x1, x2 = _correlated(noise=2.0)
    u, v = pca_cca(x1, x2, n_pcs=10, n_components=6, seed=0)
    assert u.shape == v.shape == (400, 6)
    rho = canonical_correlations(u, v)
    np.testing.assert_allclose(rho, _numpy_cca(x1, x2, 10)[:6], rtol=1e-6, atol=1e-8)
    assert (np.diff(rho) <= 1e-12).all() and rho[0] > 0.8                     # sorted, real signal found
    # canonical variates: unit variance, uncorrelated within and across modalities except pair-wise
    np.testing.assert_allclose(np.cov(u, rowvar=False, bias=True), np.eye(6), atol=1e-8)
    np.testing.assert_allclose(np.cov(v, rowvar=False, bias=True), np.eye(6), atol=1e-8)
    cross = (u - u.mean(0)).T @ (v - v.mean(0)) / len(u)
    np.testing.assert_allclose(cross, np.diag(rho), atol=1e-8)


def test_leading_correlations_agree_with_sklearn_cca():
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA

    x1, x2 = _correlated(noise=1.5, seed=1)
    u, v = pca_cca(x1, x2, n_pcs=8, n_components=3)
    p1 = PCA(8, svd_solver="full").fit_transform(x1)
    p2 = PCA(8, svd_solver="full").fit_transform(x2)
    a, b = CCA(n_components=3, max_iter=5000, tol=1e-10).fit_transform(p1, p2)
    sk = [abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) for j in range(3)]
    np.testing.assert_allclose(canonical_correlations(u, v), sk, atol=1e-3)   # sklearn iterates


def test_sparse_input_gives_the_dense_result():
    x1, x2 = _correlated(seed=2)
    x1 = np.maximum(x1, 0)                                                    # some zeros to store sparsely
    ud, vd = pca_cca(x1, x2, n_pcs=6, n_components=4)
    us, vs = pca_cca(sp.csr_matrix(x1), x2, n_pcs=6, n_components=4)
    np.testing.assert_allclose(canonical_correlations(us, vs), canonical_correlations(ud, vd), rtol=1e-6)
    np.testing.assert_allclose(np.abs(us), np.abs(ud), atol=1e-5)


def test_shared_latent_gives_low_foscttm_shuffled_pairing_chance():
    x1, x2 = _correlated(n=1000, p1=40, p2=60, rank=3, noise=0.5, seed=3)
    u, v = pca_cca(x1, x2, n_pcs=5, n_components=3)
    assert foscttm(u, v) < 0.05
    perm = np.random.default_rng(0).permutation(1000)
    assert 0.45 < foscttm(u, v[perm]) < 0.55                                  # evaluated against wrong partners
    u, v = pca_cca(x1, x2[perm], n_pcs=5, n_components=3)                     # fit on broken pairs
    # ~0.5; slightly below because in-sample CCA fits the chance correlations of 1,000 cells
    assert 0.44 < foscttm(u, v) < 0.56


def test_caps_and_bad_input():
    x1, x2 = _correlated(n=50, p1=5, p2=7)
    u, v = pca_cca(x1, x2, n_pcs=50, n_components=20)
    assert u.shape == (50, 4)                                                 # min(n, p) - 1 = 4 PCs of x1
    with pytest.raises(InputError, match="same order"):
        pca_cca(x1, x2[:40])
    with pytest.raises(InputError, match="non-finite"):
        pca_cca(np.where(x1 > 1, np.nan, x1), x2)
    with pytest.raises(InputError, match="n_components"):
        pca_cca(x1, x2, n_components=0)
    with pytest.raises(InputError, match="2-D"):
        pca_cca(x1[:, 0], x2)


def test_clr_hand_computed():
    counts = np.array([[1, 0, 3], [0, 0, 0], [7, 7, 7]], dtype=float)
    # row 0: log1p = (log 2, 0, log 4), mean = log(8)/3 = log 2, geometric mean 2
    # row 2: geometric mean 8
    expected = np.array([[np.log(1.5), 0.0, np.log(2.5)], [0.0, 0.0, 0.0], [np.log(15 / 8)] * 3])
    np.testing.assert_allclose(clr_per_cell(counts), expected, rtol=1e-6)
    np.testing.assert_allclose(clr_per_cell(sp.csr_matrix(counts)), expected, rtol=1e-6)


def test_log_normalise_hand_computed():
    counts = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0]], dtype=float))
    expected = np.array([[np.log1p(2500), np.log1p(7500), 0], [0, 0, 0]])
    np.testing.assert_allclose(log_normalise(counts).toarray(), expected, rtol=1e-6)


def _paired(modalities=("rna", "rna", "protein", "protein", "protein"), n=6, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n, len(modalities))).astype(np.float32)
    var = pd.DataFrame({"modality": list(modalities)}, index=[f"f{j}" for j in range(len(modalities))])
    adata = ad.AnnData(X=counts.copy(), var=var)
    adata.layers["counts"] = sp.csr_matrix(counts)
    return adata, counts


def test_modality_matrices_split_and_normalise():
    adata, counts = _paired()
    mats = modality_matrices(adata)
    assert list(mats) == ["rna", "protein"]
    rna, names = mats["rna"]
    assert list(names) == ["f0", "f1"]
    row = counts[0, :2]
    np.testing.assert_allclose(rna.toarray()[0], np.log1p(row / row.sum() * 1e4), rtol=1e-6)
    prot, names = mats["protein"]
    assert list(names) == ["f2", "f3", "f4"]
    row = counts[0, 2:]
    np.testing.assert_allclose(prot[0], np.log1p(row / np.exp(np.log1p(row).mean())), rtol=1e-6)


def test_modality_matrices_bad_input():
    adata, _ = _paired(("rna",) * 4)
    with pytest.raises(InputError, match="two modalities"):
        modality_matrices(adata)
    with pytest.raises(InputError, match="two modalities"):
        run_multiomics_baseline(adata)
    adata, _ = _paired(("rna", "rna", "metabolite"))
    with pytest.raises(InputError, match="metabolite"):
        modality_matrices(adata)
    adata, _ = _paired()
    del adata.layers["counts"]
    with pytest.raises(InputError, match="counts"):
        modality_matrices(adata)
    adata, _ = _paired()
    with pytest.raises(InputError, match="modality"):
        modality_matrices(ad.AnnData(X=adata.X, layers={"counts": adata.X}))
    adata, _ = _paired(("rna", "atac", "protein"), n=10)
    with pytest.raises(InputError, match="exactly two"):
        run_multiomics_baseline(adata)
    with pytest.raises(InputError, match="method"):
        run_multiomics_baseline(adata, method="wnn")


def test_run_on_simulated_multiome(tmp_path):
    from cellmamba.datasets.simulate_multiome import write_simulated_multiome

    write_simulated_multiome(tmp_path / "sim.h5ad", n_cells=300, seed=2)
    adata = read_bmmc({"h5ad": tmp_path / "sim.h5ad"}, keys=KEYS)
    out = run_multiomics_baseline(adata, n_pcs=20, n_components=10, seed=0)
    assert out["modalities"] == ["rna", "atac"] and out["method"] == "pca_cca"
    assert out["normalisation"] == {"rna": "log1p_norm", "atac": "log1p_norm"}
    u, v = out["embeddings"]["rna"], out["embeddings"]["atac"]
    assert u.shape == v.shape == (300, 10) and u.dtype == np.float32
    np.testing.assert_allclose(out["canonical_correlations"], canonical_correlations(u, v), rtol=1e-5)
    assert foscttm(u, v) < 0.15


def _kmeans_labels(x, k, seed):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def test_real_adt_with_simulated_rna(tmp_path):
    """Real CITE-seq ADT counts (dsb's 87-antibody panel) as the protein side of a CITE-format file."""
    if not DSB_ADT.exists():
        pytest.skip(f"real data not available: {DSB_ADT} is absent (shared data folder {SHARED_DATA})")
    adt = ad.read_h5ad(DSB_ADT)
    adt_counts = np.asarray(adt.X.toarray() if sp.issparse(adt.X) else adt.X, dtype=np.float64)
    n = adt.n_obs
    rng = np.random.default_rng(0)
    # RNA side, simulated from the real protein levels: one gene per antibody with Poisson counts
    # whose rate rises with the protein's CLR level in the cell, plus 100 genes of pure noise
    proteins = [name.replace("_PROT", "").replace(" ", "") for name in adt.var_names]
    level = clr_per_cell(adt_counts).astype(np.float64)
    base = np.exp(rng.normal(0.0, 1.0, size=len(proteins)))
    linked = rng.poisson(base * np.exp(1.5 * level))
    noise = rng.poisson(np.exp(rng.normal(0.0, 1.0, size=100)), size=(n, 100))
    gex = np.hstack([linked, noise]).astype(np.float32)
    gene_names = [f"{p}_gene" for p in proteins] + [f"noise{j}" for j in range(100)]
    counts = np.hstack([gex, adt_counts.astype(np.float32)])
    var = pd.DataFrame({"feature_types": ["GEX"] * len(gene_names) + ["ADT"] * adt.n_vars,
                        "gene_id": gene_names + list(adt.var_names)},
                       index=gene_names + list(adt.var_names))
    samples = adt.obs["sample"].astype(str)
    obs = pd.DataFrame({"cell_type": [f"cluster{c}" for c in _kmeans_labels(level, 6, 0)],
                        "batch": samples.to_numpy(),
                        "DonorID": pd.Categorical(samples).codes.astype(np.int64) + 10000},
                       index=adt.obs_names)
    cite = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    cite.layers["counts"] = sp.csr_matrix(counts)
    path = tmp_path / "cite.h5ad"
    cite.write_h5ad(path)
    adata = read_bmmc({"h5ad": path}, keys=KEYS)
    assert dict(adata.var["modality"].value_counts()) == {"rna": len(gene_names), "protein": adt.n_vars}
    mats = modality_matrices(adata)
    assert list(mats) == ["rna", "protein"]
    np.testing.assert_allclose(mats["protein"][0], level, rtol=1e-5, atol=1e-6)
    out = run_multiomics_baseline(adata, n_pcs=30, n_components=15, seed=0)
    u, v = out["embeddings"]["rna"], out["embeddings"]["protein"]
    paired = foscttm(u, v)
    perm = rng.permutation(n)
    assert paired < 0.2 < 0.4 < foscttm(u, v[perm])                           # true pairs far better than chance
    assert out["canonical_correlations"][0] > 0.8


def test_files_round_trip_through_the_paired_embedding_format(tmp_path):
    from cellmamba.baselines.multiomics import run_multiomics_baseline_files
    from cellmamba.datasets.simulate_multiome import write_simulated_multiome
    from cellmamba.io import read_paired_embedding

    write_simulated_multiome(tmp_path / "raw.h5ad", n_cells=150, seed=5)
    read_bmmc({"h5ad": tmp_path / "raw.h5ad"}, keys=KEYS).write_h5ad(tmp_path / "dataset.h5ad")
    out = run_multiomics_baseline_files(tmp_path / "dataset.h5ad", tmp_path / "emb.h5ad", method="pca_cca", seed=0,
                                        settings={"n_pcs": 10, "n_components": 4})
    obs, mods, x, y = read_paired_embedding(tmp_path / "emb.h5ad")
    assert mods == ["rna", "atac"] and x.shape == y.shape == (150, 4)
    np.testing.assert_array_equal(x, out["embeddings"]["rna"])
    assert obs["cell_type"].notna().all()
    with pytest.raises(InputError, match="unknown setting"):
        run_multiomics_baseline_files(tmp_path / "dataset.h5ad", tmp_path / "e2.h5ad", method="pca_cca", seed=0,
                                      settings={"n_hvg": 100})


# --- scvi-tools baselines: MULTIVI (RNA + ATAC, one latent per modality), TOTALVI (RNA + protein, one joint latent)

SCVI_FAST = {"max_epochs": 2, "accelerator": "cpu"}


def _sim_cite(n=240, n_genes=60, n_proteins=12, n_types=3, seed=0):
    """Paired RNA + protein counts of n_types cell types in 2 batches (var modality, layers counts)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, size=n)
    gene_rate = np.exp(rng.normal(0.0, 1.0, size=(n_types, n_genes)))
    prot_rate = 20 * np.exp(rng.normal(0.0, 1.0, size=(n_types, n_proteins)))
    counts = np.hstack([rng.poisson(gene_rate[types]), rng.poisson(prot_rate[types] + 5.0)]).astype(np.float32)
    names = [f"g{j}" for j in range(n_genes)] + [f"p{j}" for j in range(n_proteins)]
    var = pd.DataFrame({"modality": ["rna"] * n_genes + ["protein"] * n_proteins}, index=names)
    obs = pd.DataFrame({"cell_type": [f"type{t}" for t in types], "batch": [f"b{i % 2}" for i in range(n)]},
                       index=[f"c{i}" for i in range(n)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.layers["counts"] = sp.csr_matrix(counts)
    return adata


def _sim_multiome_file(tmp_path, n_cells=200, seed=5):
    from cellmamba.datasets.simulate_multiome import write_simulated_multiome

    write_simulated_multiome(tmp_path / "raw_multiome.h5ad", n_cells=n_cells, n_batches=2, seed=seed)
    path = tmp_path / "multiome.h5ad"
    read_bmmc({"h5ad": tmp_path / "raw_multiome.h5ad"}, keys=KEYS).write_h5ad(path)
    return path


def test_multivi_writes_one_latent_per_modality_seeded(tmp_path):
    import scvi

    from cellmamba.baselines.multiomics import run_multiomics_baseline_files
    from cellmamba.io import read_h5ad_plain, read_paired_embedding

    dataset = _sim_multiome_file(tmp_path)
    settings = {"n_latent": 5, **SCVI_FAST}
    out = run_multiomics_baseline_files(dataset, tmp_path / "a.h5ad", method="multivi", seed=0, settings=settings)
    obs, mods, x, y = read_paired_embedding(tmp_path / "a.h5ad")
    assert mods == ["rna", "atac"] and x.shape == y.shape == (200, 5) and x.dtype == np.float32
    assert np.isfinite(x).all() and np.isfinite(y).all()
    assert not np.allclose(x, y)                                  # two encoders' latents, not one array twice
    np.testing.assert_array_equal(x, out["embeddings"]["rna"])
    info = read_h5ad_plain(tmp_path / "a.h5ad", "test").uns["cellmamba"]
    assert not info["joint"] and info["method"] == "multivi" and info["seed"] == 0
    assert info["settings"]["n_latent"] == 5 and info["settings"]["max_epochs"] == 2 and info["epochs"] == 2
    assert info["scvi_version"] == scvi.__version__
    assert dict(info["n_features"]) == {"rna": int((read_bmmc_var(dataset) == "rna").sum()),
                                        "atac": int((read_bmmc_var(dataset) == "atac").sum())}
    run_multiomics_baseline_files(dataset, tmp_path / "b.h5ad", method="multivi", seed=0, settings=settings)
    _, _, x2, y2 = read_paired_embedding(tmp_path / "b.h5ad")
    np.testing.assert_array_equal(x2, x)                          # same seed, same embedding
    np.testing.assert_array_equal(y2, y)
    run_multiomics_baseline_files(dataset, tmp_path / "c.h5ad", method="multivi", seed=1, settings=settings)
    assert not np.allclose(read_paired_embedding(tmp_path / "c.h5ad")[2], x)  # the seed is used


def read_bmmc_var(path):
    return ad.read_h5ad(path).var["modality"].astype(str).to_numpy()


def test_totalvi_writes_one_joint_latent_seeded_and_scores_skip_cross_modal(tmp_path):
    from cellmamba.baselines.multiomics import run_multiomics_baseline_files
    from cellmamba.io import read_h5ad_plain
    from cellmamba.metrics.foscttm import CROSS_MODAL_METRICS, score_paired_embedding_file

    dataset = tmp_path / "cite.h5ad"
    _sim_cite().write_h5ad(dataset)
    settings = {"n_latent": 6, **SCVI_FAST}
    out = run_multiomics_baseline_files(dataset, tmp_path / "t.h5ad", method="totalvi", seed=0, settings=settings)
    a = read_h5ad_plain(tmp_path / "t.h5ad", "test")
    assert list(a.obsm) == ["X_emb"] and a.obsm["X_emb"].shape == (240, 6)   # ONE latent, no per-modality keys
    np.testing.assert_array_equal(a.obsm["X_emb"], out["embedding"])
    info = a.uns["cellmamba"]
    assert info["joint"] and info["method"] == "totalvi" and list(info["modalities"]) == ["rna", "protein"]
    assert info["settings"]["n_latent"] == 6 and info["epochs"] == 2
    assert dict(info["n_features"]) == {"rna": 60, "protein": 12}
    run_multiomics_baseline_files(dataset, tmp_path / "t2.h5ad", method="totalvi", seed=0, settings=settings)
    np.testing.assert_array_equal(read_h5ad_plain(tmp_path / "t2.h5ad", "test").obsm["X_emb"], a.obsm["X_emb"])
    run_multiomics_baseline_files(dataset, tmp_path / "t3.h5ad", method="totalvi", seed=1, settings=settings)
    assert not np.allclose(read_h5ad_plain(tmp_path / "t3.h5ad", "test").obsm["X_emb"], a.obsm["X_emb"])

    joint = score_paired_embedding_file(tmp_path / "t.h5ad")
    for name in CROSS_MODAL_METRICS:
        assert np.isnan(joint[name]) and "joint latent" in joint.notes[name]
    assert np.isfinite(joint["nmi"]) and np.isfinite(joint["ari"])
    # the same cells through pca_cca: a paired file, every metric computed, no note
    run_multiomics_baseline_files(dataset, tmp_path / "p.h5ad", method="pca_cca", seed=0,
                                  settings={"n_pcs": 10, "n_components": 5})
    paired = score_paired_embedding_file(tmp_path / "p.h5ad")
    assert all(np.isfinite(paired[name]) for name in CROSS_MODAL_METRICS) and not paired.notes
    assert list(paired) == list(joint)                            # the same metric names either way


def test_joint_nmi_ari_are_of_the_latent_itself(tmp_path):
    """A joint file whose latent separates the cell types perfectly scores NMI = ARI = 1."""
    from cellmamba.baselines.multiomics import write_joint_embedding
    from cellmamba.metrics.foscttm import score_paired_embedding_file

    rng = np.random.default_rng(0)
    types = np.repeat([0, 1, 2], 60)
    centres = 10.0 * np.eye(3, 4)
    latent = centres[types] + 0.1 * rng.normal(size=(180, 4)) + 1.0
    obs = pd.DataFrame({"cell_type": [f"t{t}" for t in types]}, index=[f"c{i}" for i in range(180)])
    write_joint_embedding(obs, latent, tmp_path / "j.h5ad", info={"method": "totalvi", "modalities": ["rna", "protein"]})
    scores = score_paired_embedding_file(tmp_path / "j.h5ad")
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    write_joint_embedding(obs, rng.normal(size=(180, 4)), tmp_path / "r.h5ad",
                          info={"method": "totalvi", "modalities": ["rna", "protein"]})
    assert score_paired_embedding_file(tmp_path / "r.h5ad")["ari"] < 0.2   # random latent: no agreement
    with pytest.raises(InputError, match="modalities"):
        write_joint_embedding(obs, latent, tmp_path / "x.h5ad", info={"method": "totalvi"})


def test_scvi_methods_refuse_other_modality_pairs(tmp_path):
    cite = _sim_cite(n=30)
    with pytest.raises(InputError, match=r"'multivi'.*\['rna', 'protein'\].*only rna \+ atac"):
        run_multiomics_baseline(cite, method="multivi", **SCVI_FAST)
    multiome = ad.read_h5ad(_sim_multiome_file(tmp_path, n_cells=30))
    with pytest.raises(InputError, match=r"'totalvi'.*\['rna', 'atac'\].*only rna \+ protein"):
        run_multiomics_baseline(multiome, method="totalvi", **SCVI_FAST)
    with pytest.raises(InputError, match="unknown setting"):
        run_multiomics_baseline(multiome, method="multivi", n_pcs=10)
    with pytest.raises(InputError, match="max_epochs"):
        run_multiomics_baseline(multiome, method="multivi", max_epochs=0)
    del multiome.obs["batch"]
    with pytest.raises(InputError, match="batch"):
        run_multiomics_baseline(multiome, method="multivi", **SCVI_FAST)

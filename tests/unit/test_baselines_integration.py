"""Integration baselines: PCA against a hand-computed reference, Harmony removes a synthetic
batch shift that PCA keeps, scVI runs on counts and refuses log-only data."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.baselines import integrate_baseline, run_integration_baseline, select_hvg
from cellmamba.errors import InputError


def _var(n_genes):
    names = [f"G{j}" for j in range(n_genes)]
    return pd.DataFrame({"gene_name": names}, index=names)


def _batch_shifted(n=600, n_genes=40, seed=0, shift=0.5):
    """Log-normalised-like data: 3 cell types (8 marker genes each), batch b1 shifts genes 24-39."""
    rng = np.random.default_rng(seed)
    types = np.array(["alpha", "beta", "gamma"])[np.arange(n) % 3]
    batch = np.where((np.arange(n) // 3) % 2 == 0, "b0", "b1")
    X = np.tile(rng.uniform(0.5, 1.5, n_genes), (n, 1))
    for i, t in enumerate(("alpha", "beta", "gamma")):
        X[types == t, i * 8:(i + 1) * 8] += 2.0
    X[batch == "b1", 24:40] += shift
    X = np.clip(X + rng.normal(0, 0.3, X.shape), 0, None).astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"cell_type": types, "batch": batch},
                                                            index=[f"c{i}" for i in range(n)]), var=_var(n_genes))
    adata.uns["cellmamba"] = {"x_kind": "log1p_norm"}
    return adata


def _counts(n=120, n_genes=30, seed=0):
    rng = np.random.default_rng(seed)
    types = np.arange(n) % 3
    batch = np.where(np.arange(n) % 2, "b1", "b0")
    mu = rng.uniform(1, 5, (3, n_genes))[types] * np.where(batch == "b1", 1.5, 1.0)[:, None]
    X = rng.poisson(mu).astype(np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"cell_type": types.astype(str), "batch": batch},
                                                            index=[f"c{i}" for i in range(n)]), var=_var(n_genes))
    adata.uns["cellmamba"] = {"x_kind": "counts"}
    return adata


def _separation(Z, adata):
    """Mean distance between the two batches' centroids within a cell type, and between cell types."""
    t, b = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    d_batch = np.mean([np.linalg.norm(Z[(t == c) & (b == "b0")].mean(0) - Z[(t == c) & (b == "b1")].mean(0))
                       for c in np.unique(t)])
    cents = [Z[t == c].mean(0) for c in np.unique(t)]
    d_type = np.mean([np.linalg.norm(cents[i] - cents[j]) for i in range(3) for j in range(i + 1, 3)])
    return d_batch, d_type


def test_pca_equals_scaled_svd():
    adata = _batch_shifted(n=60)
    Z = integrate_baseline(adata, "pca", seed=0, n_comps=5)
    assert Z.shape == (60, 5) and Z.dtype == np.float32
    X = adata.X.toarray().astype(np.float64)
    X = (X - X.mean(0)) / X.std(0, ddof=1)  # scanpy pp.scale; no value reaches the clip at 10
    assert np.abs(X).max() < 10
    U, S, _ = np.linalg.svd(X, full_matrices=False)
    want = U[:, :5] * S[:5]
    sign = np.sign(np.sum(Z * want, axis=0))
    np.testing.assert_allclose(Z * sign, want, atol=1e-3)
    # unscaled: PCA of the centred log-normalised values
    Z = integrate_baseline(adata, "pca", seed=0, n_comps=3, scale=False)
    Xc = adata.X.toarray().astype(np.float64)
    U, S, _ = np.linalg.svd(Xc - Xc.mean(0), full_matrices=False)
    want = U[:, :3] * S[:3]
    np.testing.assert_allclose(Z * np.sign(np.sum(Z * want, axis=0)), want, atol=1e-3)


def test_harmony_removes_batch_shift_that_pca_keeps():
    adata = _batch_shifted()
    pca = integrate_baseline(adata, "pca", seed=0, n_comps=10)
    harmony = integrate_baseline(adata, "harmony", seed=0, n_comps=10)
    assert harmony.shape == (adata.n_obs, 10) and harmony.dtype == np.float32
    batch_pca, type_pca = _separation(pca, adata)
    batch_h, type_h = _separation(harmony, adata)
    assert batch_pca > 0.5 * type_pca  # unintegrated: batches stay apart
    assert batch_h < 0.3 * batch_pca  # harmony: batch centroids pulled together
    assert type_h > 0.9 * type_pca  # cell types kept apart
    again = integrate_baseline(adata, "harmony", seed=0, n_comps=10)
    np.testing.assert_allclose(again, harmony, atol=1e-5)
    one_batch = adata.copy()
    one_batch.obs["batch"] = "b0"
    with pytest.raises(InputError, match="batch"):
        integrate_baseline(one_batch, "harmony", seed=0, n_comps=10)


def test_hvg_flavours():
    import scanpy as sc

    counts = _counts()
    mask = select_hvg(counts, 10, flavor="seurat_v3", by_batch=True)
    direct = ad.AnnData(X=counts.X.copy(), obs=counts.obs[["batch"]].astype(str))
    sc.pp.highly_variable_genes(direct, n_top_genes=10, flavor="seurat_v3", batch_key="batch")
    np.testing.assert_array_equal(mask, direct.var["highly_variable"].to_numpy())
    assert mask.sum() == 10
    logonly = _batch_shifted(n=60)
    with pytest.raises(InputError, match="cell_ranger"):
        integrate_baseline(logonly, "pca", seed=0, n_hvg=20, n_comps=5)
    Z = integrate_baseline(logonly, "pca", seed=0, n_hvg=20, n_comps=5, hvg_flavor="cell_ranger")
    assert Z.shape == (60, 5)
    with pytest.raises(InputError, match="n_hvg"):
        integrate_baseline(logonly, "pca", seed=0, n_hvg=41, hvg_flavor="cell_ranger")


def test_scvi_runs_on_counts_and_refuses_log_only():
    adata = _counts()
    Z = integrate_baseline(adata, "scvi", seed=0, max_epochs=2, n_latent=4, n_hidden=16)
    assert Z.shape == (adata.n_obs, 4) and Z.dtype == np.float32 and np.isfinite(Z).all()
    again = integrate_baseline(adata, "scvi", seed=0, max_epochs=2, n_latent=4, n_hidden=16)
    np.testing.assert_allclose(again, Z, atol=1e-5)  # seeded
    with pytest.raises(InputError, match="not applicable"):
        integrate_baseline(_batch_shifted(n=60), "scvi", seed=0, max_epochs=1)


def test_integration_errors_name_the_key():
    adata = _batch_shifted(n=60)
    with pytest.raises(InputError, match="'umap'"):
        integrate_baseline(adata, "umap", seed=0)
    with pytest.raises(InputError, match="n_latnet"):
        integrate_baseline(adata, "scvi", seed=0, n_latnet=5)
    with pytest.raises(InputError, match="hvg_flavor"):
        integrate_baseline(adata, "pca", seed=0, hvg_flavor="pearson")


def test_run_integration_baseline_writes_h5ad(tmp_path):
    adata = _batch_shifted(n=60)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "res" / "embedding.h5ad"
    run_integration_baseline(path, out, method="pca", seed=3,
                             settings={"n_comps": 4, "n_hvg": 20, "hvg_flavor": "cell_ranger"})
    back = ad.read_h5ad(out)
    assert back.shape == (60, 0)
    assert list(back.obs_names) == list(adata.obs_names)
    assert list(back.obs.columns) == ["cell_type", "batch"]
    assert back.obsm["X_emb"].shape == (60, 4) and back.obsm["X_emb"].dtype == np.float32
    info = back.uns["cellmamba"]
    assert info["method"] == "pca" and info["seed"] == 3
    assert info["settings"]["n_hvg"] == 20 and info["settings"]["n_comps"] == 4
    expected = integrate_baseline(adata, "pca", seed=3, n_hvg=20, n_comps=4, hvg_flavor="cell_ranger")
    np.testing.assert_allclose(back.obsm["X_emb"], expected)


def test_run_integration_baseline_uses_the_models_gene_selection(tmp_path):
    from cellmamba.tasks.tokens import select_genes

    adata = _counts()
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "emb.h5ad"
    protocol = {"n_hvg": 12, "min_counts": 3}
    run_integration_baseline(path, out, method="harmony", seed=0, settings={"n_comps": 5}, genes=protocol)
    back = ad.read_h5ad(out)
    mask = select_genes(adata, n_hvg=12, min_counts=3)
    assert back.uns["cellmamba"]["n_genes_selected"] == int(mask.sum()) == 12
    assert back.uns["cellmamba"]["genes"] == protocol
    expected = integrate_baseline(adata, "harmony", seed=0, genes=mask, n_comps=5)
    np.testing.assert_allclose(back.obsm["X_emb"], expected, atol=1e-6)
    # the genes are log-normalised over every gene, then selected
    Z = integrate_baseline(adata, "pca", seed=0, genes=mask, n_comps=3, scale=False)
    X = adata.X.toarray().astype(np.float64)
    X = np.log1p(X / X.sum(1, keepdims=True) * 1e4)[:, mask]
    U, S, _ = np.linalg.svd(X - X.mean(0), full_matrices=False)
    want = U[:, :3] * S[:3]
    np.testing.assert_allclose(Z * np.sign(np.sum(Z * want, axis=0)), want, atol=1e-3)
    with pytest.raises(InputError, match="give one"):
        run_integration_baseline(path, out, method="pca", seed=0, settings={"n_hvg": 10}, genes=protocol)
    with pytest.raises(InputError, match="not both"):
        integrate_baseline(adata, "pca", seed=0, n_hvg=10, genes=mask)

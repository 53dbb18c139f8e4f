"""Readers on miniature files written here in each published format (DATASETS.md section 7)."""
from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.io import mmwrite

from cellmamba.datasets import (READERS, prepare_dataset, read_annotation_pair, read_bmmc, read_dataset, read_norman,
                                read_pbmc10k, read_pbmc68k_reduced, read_user_h5ad, stratified_split,
                                validate_standard)
from cellmamba.errors import CorruptFileError, InputError

RNG_SEED = 7


def _roundtrip(adata, tmp_path):
    """Every reader's output must survive an h5ad write / read."""
    path = tmp_path / "roundtrip.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.shape == adata.shape and list(back.obs_names) == list(adata.obs_names)
    return back


# --------------------------------------------------------------------------- PBMC 10k fixture
GENES = [f"ENSG0000000000{i}" for i in range(1, 9)]        # G1..G8
SYMBOLS = [f"GENE{i}" for i in range(1, 9)]
BARCODES_8K = ["AAAC-1", "AAAG-1", "AACC-1", "AACG-1", "ZERO-1", "SHARED-1"]
BARCODES_4K = ["CCCA-1", "CCCG-1", "CCGA-1", "SHARED-1"]
META_BARCODES = ["CCCA-1", "AAAC-1", "SHARED-1", "AAAG-1", "AACC-1", "CCCG-1", "SHARED-11", "CCGA-1"]
META_CLUSTERS = [0, 1, 2, 1, 0, 2, 1, 0]
LIST_CLUSTERS = np.array(["B cells", "CD4 T cells", "NK cells"])
GENE_INFO_ORDER = ["ENSG00000000003", "ENSG00000000001", "ENSG00000000002", "ENSG00000000007",
                   "ENSG00000000004", "ENSG00000000006", "ENSG00000000099"]  # G5 not listed, G99 not measured


def _counts(barcodes, rng, *, zero_genes=(), zero_cells=()):
    X = rng.integers(1, 6, size=(len(barcodes), len(GENES)))
    for g in zero_genes:
        X[:, GENES.index(g)] = 0
    for c in zero_cells:
        X[barcodes.index(c)] = 0
    return X


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_10x_tar(path, X, barcodes):
    """10x v2 layout: filtered_gene_bc_matrices/GRCh38/{matrix.mtx,genes.tsv,barcodes.tsv}; mtx is genes x cells."""
    buf = io.BytesIO()
    mmwrite(buf, sp.coo_matrix(X.T), field="integer")
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "filtered_gene_bc_matrices/GRCh38/matrix.mtx", buf.getvalue())
        _add(tar, "filtered_gene_bc_matrices/GRCh38/genes.tsv",
             "".join(f"{g}\t{s}\n" for g, s in zip(GENES, SYMBOLS)).encode())
        _add(tar, "filtered_gene_bc_matrices/GRCh38/barcodes.tsv", "".join(f"{b}\n" for b in barcodes).encode())


@pytest.fixture
def pbmc_files(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    X8 = _counts(BARCODES_8K, rng, zero_genes=("ENSG00000000008",), zero_cells=("ZERO-1",))
    X4 = _counts(BARCODES_4K, rng, zero_genes=("ENSG00000000008", "ENSG00000000007"))
    files = {"pbmc8k": tmp_path / "pbmc8k_filtered_gene_bc_matrices.tar.gz",
             "pbmc4k": tmp_path / "pbmc4k_filtered_gene_bc_matrices.tar.gz",
             "gene_info": tmp_path / "gene_info_pbmc.csv", "metadata": tmp_path / "pbmc_metadata.pickle"}
    _write_10x_tar(files["pbmc8k"], X8, BARCODES_8K)
    _write_10x_tar(files["pbmc4k"], X4, BARCODES_4K)
    pd.DataFrame({"ENSG": GENE_INFO_ORDER, "GS": [f"sym{i}" for i in range(len(GENE_INFO_ORDER))]}).to_csv(
        files["gene_info"], index=False)
    n = len(META_BARCODES)
    meta = {
        "barcodes": pd.DataFrame(index=pd.Index(META_BARCODES)),
        "design": pd.DataFrame(rng.normal(size=(n, 2))),
        "raw_qc": pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"]),
        "normalized_qc": pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"]),
        "qc_pc": rng.normal(size=(n, 2)),
        "clusters": np.array(META_CLUSTERS),
        "list_clusters": LIST_CLUSTERS,
    }
    with open(files["metadata"], "wb") as fh:
        pickle.dump(meta, fh)
    return files, X8, X4


PBMC_KEYS = {"label_key": "str_labels", "batch_key": "batch"}


def test_pbmc10k_reproduces_scvi_build(pbmc_files, tmp_path):
    files, X8, X4 = pbmc_files
    adata = read_pbmc10k(files, keys=PBMC_KEYS)
    validate_standard(adata, "integration")
    # cells: metadata order, found ones; "-11" dropped; AACG-1 (not in metadata) and ZERO-1 (no counts) gone
    expected_cells = ["CCCA-1", "AAAC-1", "SHARED-1", "AAAG-1", "AACC-1", "CCCG-1", "CCGA-1"]
    assert list(adata.obs_names) == expected_cells
    # batch 0 = the 8k file; a barcode in both files resolves to the 4k cell, as in scvi-tools
    assert list(adata.obs["batch"]) == ["1", "0", "1", "0", "0", "1", "1"]
    # genes: gene_info order; G7 (no counts in 4k: inner join), G8 (no counts), G5 (not listed), G99 dropped
    assert list(adata.var_names) == ["ENSG00000000003", "ENSG00000000001", "ENSG00000000002",
                                     "ENSG00000000004", "ENSG00000000006"]
    assert list(adata.var["gene_symbols"]) == ["GENE3", "GENE1", "GENE2", "GENE4", "GENE6"]
    assert list(adata.var["gene_name"]) == list(adata.var["gene_symbols"])
    assert list(adata.var["gene_id"]) == list(adata.var_names)
    # labels: clusters of the kept metadata rows (row 6, SHARED-11, dropped)
    kept = [c for b, c in zip(META_BARCODES, META_CLUSTERS) if not b.endswith("11")]
    assert list(adata.obs["labels"]) == kept
    assert list(adata.obs["str_labels"]) == list(LIST_CLUSTERS[kept])
    assert list(adata.obs["cell_type"]) == list(LIST_CLUSTERS[kept])
    # X: raw counts of the right cell and gene, also in layer counts
    g3, aaag = GENES.index("ENSG00000000003"), BARCODES_8K.index("AAAG-1")
    assert adata.X[3, 0] == X8[aaag, g3]
    shared4 = BARCODES_4K.index("SHARED-1")
    assert adata.X[2, 1] == X4[shared4, GENES.index("ENSG00000000001")]
    assert adata.uns["cellmamba"]["x_kind"] == "counts"
    assert (adata.layers["counts"] != adata.X).nnz == 0
    np.testing.assert_allclose(adata.var["n_counts"], np.asarray(adata.X.sum(axis=0)).ravel())
    assert list(adata.obsm["design"].index) == expected_cells and adata.obsm["qc_pc"].shape == (7, 2)
    assert "n_counts" in adata.obs
    _roundtrip(adata, tmp_path)


def test_pbmc10k_errors(pbmc_files, tmp_path):
    files, _, _ = pbmc_files
    with pytest.raises(InputError, match="'celltype'"):
        read_pbmc10k(files, keys={"label_key": "celltype", "batch_key": "batch"})
    with pytest.raises(InputError, match="'pbmc4k'"):
        read_pbmc10k({k: v for k, v in files.items() if k != "pbmc4k"}, keys=PBMC_KEYS)
    bad_csv = tmp_path / "gene_info_bad.csv"
    pd.DataFrame({"gene": GENES}).to_csv(bad_csv, index=False)
    with pytest.raises(InputError, match="gene_info_bad.csv.*'ENSG'"):
        read_pbmc10k({**files, "gene_info": bad_csv}, keys=PBMC_KEYS)
    not_tar = tmp_path / "not.tar.gz"
    not_tar.write_bytes(b"html error page")
    with pytest.raises(CorruptFileError, match="not.tar.gz"):
        read_pbmc10k({**files, "pbmc8k": not_tar}, keys=PBMC_KEYS)


def test_pbmc10k_metadata_is_never_unpickled_unsafely(pbmc_files, tmp_path):
    files, _, _ = pbmc_files
    evil = tmp_path / "evil.pickle"

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil.write_bytes(pickle.dumps({"barcodes": Evil()}))
    with pytest.raises(CorruptFileError, match="not allowed"):
        read_pbmc10k({**files, "metadata": evil}, keys=PBMC_KEYS)
    wrong = tmp_path / "wrong.pickle"
    wrong.write_bytes(pickle.dumps({"barcodes": pd.DataFrame(index=["X-1"])}))
    with pytest.raises(InputError, match="lacks key"):
        read_pbmc10k({**files, "metadata": wrong}, keys=PBMC_KEYS)


# --------------------------------------------------------------------------- annotation fixtures
ANNOTATION = {
    "myeloid": {"files": ("reference_adata.h5ad", "query_adata.h5ad"),
                "keys": {"label_key": "cell_type", "batch_key": "batch", "gene_name_key": None},
                "ref_types": ["cDC2", "Macro_C1QC", "Mono_CD14", "pDC"], "query_only": ["Mast_KIT"]},
    "ms": {"files": ("c_data.h5ad", "filtered_ms_adata.h5ad"),
           "keys": {"label_key": "Factor Value[inferred cell type - authors labels]", "batch_key": None,
                    "gene_name_key": "gene_name"},
           "ref_types": ["astrocytes", "microglia", "OPC", "oligodendrocyte A"],
           "query_only": ["B cells", "oligodendrocyte B"]},
    "hpancreas": {"files": ("demo_train.h5ad", "demo_test.h5ad"),
                  "keys": {"label_key": "Celltype", "batch_key": None, "gene_name_key": "Gene Symbol"},
                  "ref_types": ["alpha", "beta", "ductal", "acinar"], "query_only": ["MHC class II"]},
}
SYMBOLS_A = ["CD14", "LYZ", "C1QC", "KIT", "GCG", "INS", "KRT19", "PRSS1", "MBP", "GFAP", "PLP1", "CD79A"]
ENSG_A = [f"ENSG00000{i:06d}" for i in range(len(SYMBOLS_A))]


def _annotation_part(dataset, n, types, rng, *, query):
    X = sp.random(n, len(SYMBOLS_A), density=0.5, format="csr", random_state=rng, dtype=np.float32)
    X.data = np.log1p(X.data * 50).astype(np.float32)
    labels = rng.choice(types, size=n).astype(object)
    labels[0] = types[-1]  # the last class (query-only in the query) is certainly present
    obs = pd.DataFrame(index=[f"{'q' if query else 'r'}cell{i}" for i in range(n)])
    if dataset == "myeloid":
        obs["cell_type"] = pd.Categorical(labels)
        obs["cancer_type"] = rng.choice(["MYE", "OV-FTC", "ESCA"] if query else ["UCEC", "PAAD", "THCA"], size=n)
        obs["batch"] = rng.choice(["P1", "P2"] if not query else ["P7"], size=n)
        var = pd.DataFrame(index=SYMBOLS_A)
        var["highly_variable"] = True
    elif dataset == "ms":
        obs["Factor Value[inferred cell type - authors labels]"] = labels
        obs["Factor Value[inferred cell type - ontology labels]"] = [f"CL:{t}" for t in labels]
        obs["Sample Characteristic[disease]"] = "multiple sclerosis" if query else "normal"
        obs["Sample Characteristic[sampling site]"] = "premotor cortex"
        var = pd.DataFrame({"gene_name": SYMBOLS_A}, index=ENSG_A)
    else:
        obs["Celltype"] = labels
        var = pd.DataFrame({"Gene Symbol": SYMBOLS_A}, index=SYMBOLS_A)
    return ad.AnnData(X=X, obs=obs, var=var)


def write_annotation_pair(tmp_path, dataset, *, n_ref=30, n_query=20):
    spec = ANNOTATION[dataset]
    rng = np.random.default_rng(RNG_SEED)
    ref = _annotation_part(dataset, n_ref, spec["ref_types"], rng, query=False)
    query = _annotation_part(dataset, n_query, spec["ref_types"][:2] + spec["query_only"], rng, query=True)
    files = {"reference": tmp_path / spec["files"][0], "query": tmp_path / spec["files"][1]}
    ref.write_h5ad(files["reference"])
    query.write_h5ad(files["query"])
    return files, dict(spec["keys"]), ref, query


@pytest.mark.parametrize("dataset", sorted(ANNOTATION))
def test_annotation_pair(tmp_path, dataset):
    files, keys, ref, query = write_annotation_pair(tmp_path, dataset)
    adata = read_annotation_pair(files, keys=keys)
    validate_standard(adata, "annotation")
    assert adata.shape == (ref.n_obs + query.n_obs, len(SYMBOLS_A))
    assert list(adata.obs["split"]) == ["reference"] * ref.n_obs + ["query"] * query.n_obs
    label = keys["label_key"]
    assert list(adata.obs["cell_type"].astype(str)) == list(ref.obs[label].astype(str)) + list(query.obs[label].astype(str))
    for cls in ANNOTATION[dataset]["query_only"][-1:]:  # query-only classes kept
        assert cls in set(adata.obs.loc[adata.obs["split"] == "query", "cell_type"])
        assert cls not in set(adata.obs.loc[adata.obs["split"] == "reference", "cell_type"])
    assert list(adata.var["gene_name"]) == SYMBOLS_A
    if dataset == "ms":
        assert list(adata.var["gene_id"]) == ENSG_A and list(adata.var_names) == ENSG_A
    else:
        assert "gene_id" not in adata.var
    if dataset == "myeloid":  # the source's batch column
        assert list(adata.obs["batch"]) == list(ref.obs["batch"]) + list(query.obs["batch"])
        assert "cancer_type" in adata.obs
    else:
        assert list(adata.obs["batch"]) == list(adata.obs["split"])
    for column in ref.obs.columns:  # original columns kept
        assert column in adata.obs
    assert adata.uns["cellmamba"]["x_kind"] == "log1p_norm"
    np.testing.assert_allclose(adata.X[: ref.n_obs].toarray(), ref.X.toarray())
    _roundtrip(adata, tmp_path)


def test_annotation_wrong_label_key_names_file_and_key(tmp_path):
    files, keys, _, _ = write_annotation_pair(tmp_path, "ms")
    keys["label_key"] = "celltype"
    with pytest.raises(InputError) as err:
        read_annotation_pair(files, keys=keys)
    assert "c_data.h5ad" in str(err.value) and "'celltype'" in str(err.value)


def test_annotation_wrong_gene_key(tmp_path):
    files, keys, _, _ = write_annotation_pair(tmp_path, "hpancreas")
    keys["gene_name_key"] = "gene_name"
    with pytest.raises(InputError, match="demo_train.h5ad.*'gene_name'"):
        read_annotation_pair(files, keys=keys)


def test_annotation_mismatched_gene_order(tmp_path):
    files, keys, _, query = write_annotation_pair(tmp_path, "myeloid")
    shuffled = query[:, ::-1].copy()
    shuffled.write_h5ad(files["query"])
    with pytest.raises(InputError) as err:
        read_annotation_pair(files, keys=keys)
    assert "query_adata.h5ad" in str(err.value) and "reference_adata.h5ad" in str(err.value)
    assert "position 0" in str(err.value)


def test_annotation_wrong_format(tmp_path):
    files, keys, ref, _ = write_annotation_pair(tmp_path, "myeloid")
    counts = ref.copy()
    counts.X = sp.csr_matrix(np.full(counts.shape, 120.0, dtype=np.float32))
    counts.write_h5ad(files["reference"])
    with pytest.raises(InputError, match="reference_adata.h5ad.*log-normalised"):
        read_annotation_pair(files, keys=keys)
    files["reference"].write_text("cell,type\n")
    with pytest.raises(CorruptFileError, match="reference_adata.h5ad"):
        read_annotation_pair(files, keys=keys)


def test_annotation_shared_obs_names_made_unique(tmp_path):
    files, keys, ref, query = write_annotation_pair(tmp_path, "hpancreas")
    query.obs_names = list(ref.obs_names[: query.n_obs])
    query.write_h5ad(files["query"])
    adata = read_annotation_pair(files, keys=keys)
    assert adata.obs_names.is_unique
    assert adata.obs_names[0] == f"{ref.obs_names[0]}-reference"


# --------------------------------------------------------------------------- Norman
NORMAN_GENES = ["SAMD11", "KLF1", "MAP2K6", "ZBTB1", "CEBPE", "FEV", "AHR", "TSC22D1", "SET", "CBL"]
NORMAN_IDS = ["ENSG00000187634"] + [f"ENSG00000{i:06d}" for i in range(1, len(NORMAN_GENES))]
NORMAN_CONDITIONS = ["ctrl", "KLF1+ctrl", "ctrl+ZBTB1", "KLF1+MAP2K6", "AHR+FEV"]


def write_norman(path, *, conditions=NORMAN_CONDITIONS, counts_layer=True):
    rng = np.random.default_rng(RNG_SEED)
    n = 40
    counts = rng.poisson(2.0, size=(n, len(NORMAN_GENES))).astype(np.float32)
    counts[:, 0] += 1
    total = counts.sum(axis=1, keepdims=True)
    X = np.log1p(counts / total * np.median(total))
    condition = np.array([conditions[i % len(conditions)] for i in range(n)])
    dose = np.where(condition == "ctrl", "1", "1+1")
    obs = pd.DataFrame({"condition": pd.Categorical(condition), "cell_type": "A549", "dose_val": dose,
                        "control": (condition == "ctrl").astype(int),
                        "condition_name": [f"A549_{c}_{d}" for c, d in zip(condition, dose)]},
                       index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame({"gene_name": NORMAN_GENES}, index=pd.Index(NORMAN_IDS, name="gene_id"))
    adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=var)
    if counts_layer:
        adata.layers["counts"] = sp.csr_matrix(counts)
    names = sorted(set(obs["condition_name"]) - {"A549_ctrl_1"})
    adata.uns["rank_genes_groups_cov_all"] = {c: np.array(NORMAN_IDS[::-1]) for c in names}
    adata.uns["top_non_dropout_de_20"] = {c: np.array(NORMAN_IDS[:5]) for c in names}
    adata.uns["top_non_zero_de_20"] = {c: np.array(NORMAN_IDS[:5]) for c in names}
    adata.uns["non_zeros_gene_idx"] = {c: np.arange(5, dtype=np.int64) for c in names}
    adata.uns["non_dropout_gene_idx"] = {c: np.arange(5, dtype=np.int64) for c in names}
    adata.write_h5ad(path)
    return adata


NORMAN_KEYS = {"condition_key": "condition", "gene_name_key": "gene_name"}


def test_norman(tmp_path):
    path = tmp_path / "perturb_processed.h5ad"
    source = write_norman(path)
    adata = read_norman({"h5ad": path}, keys=NORMAN_KEYS)
    validate_standard(adata, "perturbation")
    assert list(adata.obs["condition"].astype(str)) == list(source.obs["condition"].astype(str))  # as published
    assert set(adata.obs["condition"]) == set(NORMAN_CONDITIONS)
    assert list(adata.var["gene_name"]) == NORMAN_GENES and list(adata.var["gene_id"]) == NORMAN_IDS
    assert adata.uns["cellmamba"]["x_kind"] == "other" and "counts" in adata.layers
    assert "split" not in adata.obs  # issue 6 makes the GEARS split
    assert set(adata.uns["top_non_dropout_de_20"]) == set(source.uns["top_non_dropout_de_20"])
    for column in ("cell_type", "dose_val", "control", "condition_name"):
        assert column in adata.obs
    _roundtrip(adata, tmp_path)


@pytest.mark.parametrize("conditions,match", [
    (["ctrl", "KLF1_ctrl"], "KLF1_ctrl"),
    (["ctrl", "A+B+C"], r"A\+B\+C"),
    (["KLF1+ctrl", "AHR+FEV"], "no 'ctrl'"),
])
def test_norman_bad_conditions(tmp_path, conditions, match):
    path = tmp_path / "perturb_processed.h5ad"
    write_norman(path, conditions=conditions)
    with pytest.raises(InputError, match=match) as err:
        read_norman({"h5ad": path}, keys=NORMAN_KEYS)
    assert "perturb_processed.h5ad" in str(err.value)


def test_norman_needs_counts_and_keys(tmp_path):
    path = tmp_path / "perturb_processed.h5ad"
    write_norman(path, counts_layer=False)
    with pytest.raises(InputError, match="perturb_processed.h5ad.*'counts'"):
        read_norman({"h5ad": path}, keys=NORMAN_KEYS)
    write_norman(path)
    with pytest.raises(InputError, match="'perturbation'"):
        read_norman({"h5ad": path}, keys={**NORMAN_KEYS, "condition_key": "perturbation"})


# --------------------------------------------------------------------------- BMMC
def write_bmmc(path, *, multiome=False, counts_layer=True, second_type=None):
    rng = np.random.default_rng(RNG_SEED)
    gex = ["CD3E", "CD14", "MS4A1", "NKG7", "HBB"]
    other = ["chr1-9776-10668", "chr1-180726-181005", "chr2-5000-5600"] if multiome else ["CD3", "CD4", "CD19"]
    other_type = second_type or ("ATAC" if multiome else "ADT")
    n = 24
    counts = rng.poisson(3.0, size=(n, len(gex) + len(other))).astype(np.float32)
    X = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(rng.choice(["CD14+ Mono", "CD4+ T activated", "NK", "HSC"], size=n)),
        "batch": pd.Categorical(rng.choice(["s1d1", "s1d2", "s4d9"], size=n)),
        "DonorID": rng.choice([10886, 11466, 12710], size=n), "Site": "site1", "DonorAge": 35,
        "GEX_n_genes_by_counts": (counts[:, :5] > 0).sum(axis=1), "GEX_pct_counts_mt": 0.0,
    }, index=[f"{'AAACAGCC' if multiome else 'AAACCCAA'}{i:04d}-1-s1d1" for i in range(n)])
    if not multiome:
        obs["is_train"] = "train"
        obs["ADT_total_counts"] = counts[:, 5:].sum(axis=1)
    var = pd.DataFrame({"feature_types": pd.Categorical(["GEX"] * len(gex) + [other_type] * len(other)),
                        "gene_id": [f"ENSG00000{i:06d}" for i in range(len(gex))] + other},
                       index=gex + other)
    adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=obs, var=var)
    if counts_layer:
        adata.layers["counts"] = sp.csr_matrix(counts)
    adata.obsm["GEX_X_pca"] = rng.normal(size=(n, 4)).astype(np.float32)
    if multiome:
        adata.obsm["ATAC_gene_activity"] = sp.csr_matrix(rng.poisson(1.0, size=(n, 3)).astype(np.float32))
        adata.uns["ATAC_gene_activity_var_names"] = np.array(["CD3E", "CD14", "MS4A1"])
    adata.write_h5ad(path)
    return adata


BMMC_KEYS = {"label_key": "cell_type", "batch_key": "batch", "feature_type_key": "feature_types",
             "gene_id_key": "gene_id", "donor_key": "DonorID"}


@pytest.mark.parametrize("multiome", [False, True], ids=["cite", "multiome"])
def test_bmmc(tmp_path, multiome):
    path = tmp_path / "bmmc.h5ad"
    source = write_bmmc(path, multiome=multiome)
    adata = read_bmmc({"h5ad": path}, keys=BMMC_KEYS)
    validate_standard(adata, "multiomics")
    second = "atac" if multiome else "protein"
    assert list(adata.var["modality"]) == ["rna"] * 5 + [second] * 3
    assert list(adata.var["feature_type"]) == list(source.var["feature_types"])
    assert "feature_types" in adata.var  # original kept
    assert set(adata.obs["modality"]) == {"+".join(sorted(["rna", second]))}
    assert list(adata.obs["batch"]) == list(source.obs["batch"].astype(str))
    assert list(adata.obs["DonorID"]) == list(source.obs["DonorID"])
    assert list(adata.var["gene_name"]) == list(source.var_names)
    assert list(adata.var["gene_id"][:5]) == list(source.var["gene_id"][:5])
    assert adata.uns["cellmamba"]["x_kind"] == "other" and "counts" in adata.layers
    if multiome:
        assert "ATAC_gene_activity" in adata.obsm
    _roundtrip(adata, tmp_path)


def test_bmmc_errors(tmp_path):
    path = tmp_path / "bmmc.h5ad"
    write_bmmc(path, second_type="HTO")
    with pytest.raises(InputError, match="bmmc.h5ad.*'feature_types'.*HTO"):
        read_bmmc({"h5ad": path}, keys=BMMC_KEYS)
    write_bmmc(path, counts_layer=False)
    with pytest.raises(InputError, match="bmmc.h5ad.*'counts'"):
        read_bmmc({"h5ad": path}, keys=BMMC_KEYS)
    write_bmmc(path)
    with pytest.raises(InputError, match="bmmc.h5ad.*'Donor'"):
        read_bmmc({"h5ad": path}, keys={**BMMC_KEYS, "donor_key": "Donor"})


# --------------------------------------------------------------------------- demo and user data
def test_stratified_split_is_seeded_and_stratified():
    labels = np.array(["a"] * 10 + ["b"] * 20 + ["c"] * 3 + ["d"])
    split = stratified_split(labels, query_fraction=0.3, seed=0)
    assert np.array_equal(split, stratified_split(labels, query_fraction=0.3, seed=0))
    assert not np.array_equal(split, stratified_split(labels, query_fraction=0.3, seed=1))
    counts = {lab: int(((labels == lab) & (split == "query")).sum()) for lab in "abcd"}
    assert counts == {"a": 3, "b": 6, "c": 1, "d": 0}
    with pytest.raises(InputError, match="query_fraction"):
        stratified_split(labels, query_fraction=1.5, seed=0)


def test_pbmc68k_reduced(tmp_path):
    adata = read_dataset("pbmc68k_reduced", {}, task="annotation", keys={"label_key": "bulk_labels"},
                         x_kind="scaled", options={"query_fraction": 0.3, "seed": 0})
    assert adata.shape == (700, 765)
    assert adata.obs["cell_type"].nunique() == 10
    query = adata.obs["split"] == "query"
    for label, group in adata.obs.groupby("cell_type", observed=True):
        assert abs((group["split"] == "query").mean() - 0.3) < 0.15, label
    assert 0.27 < query.mean() < 0.33
    assert adata.raw is not None and adata.uns["cellmamba"]["x_kind"] == "scaled"
    assert adata.uns["cellmamba"]["split"]["seed"] == 0
    again = read_pbmc68k_reduced({}, keys={"label_key": "bulk_labels"}, query_fraction=0.3, seed=0)
    assert list(again.obs["split"]) == list(adata.obs["split"])
    _roundtrip(adata, tmp_path)


def _user_file(tmp_path, *, X=None):
    rng = np.random.default_rng(RNG_SEED)
    n = 30
    X = rng.poisson(2.0, size=(n, len(SYMBOLS_A))).astype(np.float32) if X is None else X
    obs = pd.DataFrame({"celltype": rng.choice(["T", "B", "NK"], size=n), "donor": rng.choice(["d1", "d2"], size=n),
                        "part": np.where(np.arange(n) < 20, "reference", "query"),
                        "cell_type": "unannotated"}, index=[f"u{i}" for i in range(n)])
    path = tmp_path / "mine.h5ad"
    ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=pd.DataFrame(index=SYMBOLS_A)).write_h5ad(path)
    return path


def test_user_h5ad(tmp_path):
    path = _user_file(tmp_path)
    keys = {"label_key": "celltype", "batch_key": "donor", "split_key": "part"}
    adata = read_dataset("user_h5ad", {"h5ad": path}, task="annotation", keys=keys, x_kind="counts")
    assert list(adata.obs["cell_type"]) == list(adata.obs["celltype"])
    assert set(adata.obs["source_cell_type"]) == {"unannotated"}  # the user's own column is not lost
    assert list(adata.obs["batch"]) == list(adata.obs["donor"])
    assert "counts" in adata.layers and list(adata.var["gene_name"]) == SYMBOLS_A
    integ = read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype", "batch_key": "donor"}, x_kind="counts",
                           task="integration")
    validate_standard(integ, "integration")
    assert "split" not in integ.obs
    _roundtrip(adata, tmp_path)


def test_user_h5ad_errors(tmp_path):
    path = _user_file(tmp_path)
    with pytest.raises(InputError, match="mine.h5ad.*split_key"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype"}, x_kind="counts", task="annotation")
    with pytest.raises(InputError, match="batch_key"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype"}, x_kind="counts", task="integration")
    with pytest.raises(InputError, match="mine.h5ad.*'label'"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "label", "split_key": "part"}, x_kind="counts",
                       task="annotation")
    with pytest.raises(InputError, match=r"\.raw"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype", "split_key": "part"}, x_kind="scaled",
                       task="annotation")
    path = _user_file(tmp_path, X=np.full((30, len(SYMBOLS_A)), 0.5, dtype=np.float32))
    with pytest.raises(InputError, match="mine.h5ad.*non-integer"):
        read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype", "split_key": "part"}, x_kind="counts",
                       task="annotation")
    # annotation without a split column, but an explicit seeded split asked for
    adata = read_user_h5ad({"h5ad": path}, keys={"label_key": "celltype"}, x_kind="log1p_norm", task="annotation",
                           query_fraction=0.3, seed=0)
    assert set(adata.obs["split"]) == {"reference", "query"}


# --------------------------------------------------------------------------- dispatch and prepare
def test_read_dataset_checks(tmp_path):
    files, keys, _, _ = write_annotation_pair(tmp_path, "myeloid")
    with pytest.raises(InputError, match="unknown"):
        read_dataset("gears", files, task="annotation", keys=keys)
    with pytest.raises(InputError, match="x_kind 'log1p_norm'.*'counts'"):
        read_dataset("annotation_pair", files, task="annotation", keys=keys, x_kind="counts")
    with pytest.raises(InputError, match="condition"):
        read_dataset("annotation_pair", files, task="perturbation", keys=keys)
    adata = read_dataset("annotation_pair", files, task="annotation", keys=keys, x_kind="log1p_norm")
    assert adata.uns["cellmamba"]["task"] == "annotation" and adata.uns["cellmamba"]["reader"] == "annotation_pair"
    assert set(READERS) == {"pbmc10k", "annotation_pair", "norman", "bmmc", "pbmc68k_reduced", "user_h5ad",
                            "sim_integration", "sim_perturbation", "sim_multiome", "hsmm"}


def _entry(files, keys, **extra):
    return {"task": "annotation", "reader": "annotation_pair", "keys": keys, "x_kind": "log1p_norm",
            "files": {k: {"url": None, "name": p.name, "sha256": None, "manual": "by hand"} for k, p in files.items()},
            "options": {}, "protocol": {}, "simulated": False, **extra}


def test_prepare_dataset_writes_provenance(tmp_path):
    import hashlib

    files, keys, ref, query = write_annotation_pair(tmp_path, "hpancreas")
    out = tmp_path / "results" / "datasets" / "hpancreas.h5ad"
    lock = tmp_path / "lock.json"
    prepare_dataset(_entry(files, keys), files, out, dataset="hpancreas", lock_file=lock)
    back = ad.read_h5ad(out)
    info = back.uns["cellmamba"]
    assert info["dataset"] == "hpancreas" and info["reader"] == "annotation_pair" and info["task"] == "annotation"
    digest = hashlib.sha256(files["reference"].read_bytes()).hexdigest()
    assert info["source_files"]["reference"]["sha256"] == digest
    assert info["source_files"]["query"]["name"] == "demo_test.h5ad"
    assert json.loads(info["provenance"])["config"]["reader"] == "annotation_pair"
    assert back.n_obs == ref.n_obs + query.n_obs
    assert "hpancreas/reference" in json.loads(lock.read_text())["files"]  # pre-placed file recorded


def test_prepare_dataset_rejects_a_wrong_file(tmp_path):
    files, keys, _, _ = write_annotation_pair(tmp_path, "hpancreas")
    out = tmp_path / "out.h5ad"
    with pytest.raises(InputError, match="do not match"):
        prepare_dataset(_entry(files, keys), {"reference": files["reference"]}, out, dataset="hpancreas")
    with pytest.raises(InputError, match="simulated"):
        prepare_dataset(_entry(files, keys, simulated=True), files, out, dataset="hpancreas")
    entry = _entry(files, keys)
    entry["files"]["query"]["sha256"] = "0" * 64
    with pytest.raises(CorruptFileError, match="demo_test.h5ad"):
        prepare_dataset(entry, files, out, dataset="hpancreas")
    assert not out.exists()
    assert not files["query"].exists() and files["query"].with_name("demo_test.h5ad.rejected").exists()


@pytest.mark.filterwarnings("ignore:The method concatenate is deprecated:FutureWarning")  # scvi-tools' own code
def test_pbmc10k_matches_scvi_tools_loader(pbmc_files, tmp_path):
    """The same fixture through scvi-tools' own _load_pbmc_dataset (where installed) gives the same object."""
    import shutil

    pbmc = pytest.importorskip("scvi.data._built_in_data._pbmc", reason="scvi-tools not installed")
    files, _, _ = pbmc_files
    save = tmp_path / "scvi"
    for name in ("pbmc8k", "pbmc4k"):
        (save / name).mkdir(parents=True)
        shutil.copy(files[name], save / name / "filtered_gene_bc_matrices.tar.gz")
    shutil.copy(files["gene_info"], save / "gene_info_pbmc.csv")
    shutil.copy(files["metadata"], save / "pbmc_metadata.pickle")
    ref = pbmc._load_pbmc_dataset(save_path=str(save))  # files present: nothing is downloaded
    ours = read_pbmc10k(files, keys=PBMC_KEYS)
    assert list(ours.obs_names) == list(ref.obs_names) and list(ours.var_names) == list(ref.var_names)
    assert abs(ours.X - ref.X).max() == 0
    assert list(ours.obs["batch"].astype(int)) == list(ref.obs["batch"])
    assert list(ours.obs["str_labels"]) == list(ref.obs["str_labels"])
    for column in ref.var.columns:
        np.testing.assert_array_equal(ours.var[column].to_numpy(), ref.var[column].to_numpy())
    np.testing.assert_allclose(ours.obs["n_counts"], ref.obs["n_counts"])
    np.testing.assert_allclose(ours.obsm["design"].to_numpy(), ref.obsm["design"].to_numpy())

"""The fine-tuning rules' gene-overlap check (evaluation.gene_overlap) on hand-built vocabularies."""
from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.errors import InputError
from cellmamba.tasks import FinetuneConfig, check_gene_overlap, gene_weights, vocabulary_index
from cellmamba.tasks.run import finetune_annotation_files

HUMAN = [("ENSG00000198851", "CD3E"), ("ENSG00000177455", "CD19"), ("ENSG00000105374", "NKG7"),
         ("ENSG00000090382", "LYZ"), ("ENSG00000156738", "MS4A1"), ("ENSG00000115523", "GNLY")]


def _vocab():
    return pd.DataFrame(HUMAN, columns=["feature_id", "feature_name"])


def test_fraction_is_expression_weighted_and_thresholds_apply(caplog):
    index = np.array([0, 1, -1, -1])
    # genes: 2 of 4 match; expression: 90 of 100 in the matched ones
    assert check_gene_overlap(index, source="d", min_fraction=0.5, warn_fraction=0.8) == pytest.approx(0.5)
    with caplog.at_level(logging.WARNING, logger="cellmamba.tasks.tokens"):
        frac = check_gene_overlap(index, weights=np.array([45.0, 45.0, 5.0, 5.0]), source="d", min_fraction=0.5,
                                  warn_fraction=0.95)
    assert frac == pytest.approx(0.9)
    assert "below evaluation.gene_overlap.warn_fraction = 0.95" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellmamba.tasks.tokens"):
        check_gene_overlap(index, weights=np.array([45.0, 45.0, 5.0, 5.0]), source="d", min_fraction=0.5,
                           warn_fraction=0.8)
    assert not caplog.records
    with pytest.raises(InputError, match=r"d: 2 of 4 genes \(50\.0%\), 10\.0% of the expression.*0\.100 is below "
                                         r"evaluation\.gene_overlap\.min_fraction = 0\.5"):
        check_gene_overlap(index, weights=np.array([5.0, 5.0, 45.0, 45.0]), source="d")


def test_mouse_symbols_fail_before_any_training(tmp_path):
    """0.8% of the genes (one of 125 mouse-style symbols) match: the rule stops, naming dataset, fraction,
    threshold and config key, and writes nothing (the model directory is never read)."""
    rng = np.random.default_rng(0)
    symbols = ["Cd3e", "Cd19", "Nkg7", "Lyz2"] + [f"Gm{i}" for i in range(120)] + ["CD3E"]
    n = 12
    adata = ad.AnnData(X=sp.csr_matrix(rng.poisson(2.0, size=(n, len(symbols))).astype(np.float32)),
                       obs=pd.DataFrame({"cell_type": ["a", "b"] * (n // 2), "split": ["reference", "query"] * (n // 2),
                                         "batch": "b0"}, index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame({"gene_name": symbols}, index=symbols))
    adata.uns["cellmamba"] = {"x_kind": "counts"}
    path = tmp_path / "mouse_atlas.h5ad"
    adata.write_h5ad(path)
    vocab = tmp_path / "gene_stats.tsv"
    _vocab().to_csv(vocab, sep="\t", index=False)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"dataset 'mouse_atlas'.*1 of 125 genes \(0\.8%\).*below "
                                         r"evaluation\.gene_overlap\.min_fraction = 0\.5"):
        finetune_annotation_files(path, tmp_path / "no_model", vocab, config=FinetuneConfig(),
                                  predictions=out / "predictions.csv", train_dir=out / "train",
                                  gene_overlap={"min_fraction": 0.5, "warn_fraction": 0.8})
    assert not out.exists()


def test_demo_annotation_dataset_passes_against_the_shipped_gene_table(repo_root):
    """pbmc68k_reduced (the demo's annotation dataset; sim_integration draws its genes) clears the default warn level."""
    import scanpy as sc

    from cellmamba.genes import read_gene_table

    table = read_gene_table(repo_root / "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    adata = sc.datasets.pbmc68k_reduced()
    index = vocabulary_index(pd.DataFrame(index=adata.var_names), table, source="pbmc68k_reduced")
    assert check_gene_overlap(index, weights=gene_weights(adata), source="pbmc68k_reduced") >= 0.8


def test_real_fpkm_dataset_passes_by_versioned_ids(shared_data, repo_root):
    from cellmamba.genes import read_gene_table

    table = read_gene_table(repo_root / "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    adata = ad.read_h5ad(shared_data / "real" / "hsmm_trapnell2014_fpkm.h5ad")
    assert adata.var_names[0].count(".") == 1  # versioned ids, e.g. ENSG00000000003.10
    index = vocabulary_index(adata.var, table, source="hsmm")
    assert check_gene_overlap(index, weights=gene_weights(adata), source="hsmm") > 0.85

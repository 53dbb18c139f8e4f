"""cellmamba.genes: gene tables and symbol -> Ensembl id mapping."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.genes import census_var, map_symbols, read_gene_table, read_id2name

TABLE = pd.DataFrame({"feature_id": ["E1", "E2", "E3", "E4", "E5"],
                      "feature_name": ["A", "B", "DUP", "DUP", "NEWNAME"],
                      "feature_length": [10, 20, 30, 40, 50]})
OLD = pd.DataFrame({"feature_id": ["E5", "E9", "E2"], "feature_name": ["OLDNAME", "GONE", "B_ALIAS"]})


def test_map_symbols_direct_fallback_unknown_ambiguous_duplicate(caplog):
    caplog.set_level("INFO", logger="cellmamba.genes")
    m = map_symbols(["A", "OLDNAME", "DUP", "NOPE", "GONE", "B", "B_ALIAS"], TABLE, id2name=OLD, source="toy.h5ad")
    assert m.feature_ids.tolist() == ["E1", "E5", "", "", "", "E2", ""]
    assert (m.n_direct, m.n_via_id2name, m.n_mapped) == (2, 1, 3)
    assert m.unknown == ["NOPE", "GONE"]  # GONE's id is not in the reference table
    assert m.ambiguous == ["DUP"]
    assert m.duplicates == ["B_ALIAS"]  # reaches E2, already taken by the direct match B
    assert "toy.h5ad: 3 of 7 symbols mapped" in caplog.text and "2 unknown, 1 ambiguous, 1 duplicate" in caplog.text


def test_map_symbols_without_fallback_counts_renamed_genes_unknown():
    m = map_symbols(["OLDNAME", "A"], TABLE, source="x")
    assert m.feature_ids.tolist() == ["", "E1"] and m.unknown == ["OLDNAME"]


def test_no_symbol_in_the_vocabulary_is_an_error():
    with pytest.raises(InputError, match=r"mystery\.h5ad.*none of its 2 gene symbols"):
        map_symbols(["X1", "X2"], TABLE, id2name=OLD, source="mystery.h5ad")


def test_read_shipped_gene_tables(repo_root):
    genes = read_gene_table(repo_root / "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    assert len(genes) == 78_894 and genes["feature_id"].str.startswith("ENSG").all()
    assert genes["feature_length"].dtype == np.int64
    old = read_id2name(repo_root / "resources/genes/gencode44_gene_id2name.csv.gz")
    assert list(old.columns) == ["feature_id", "feature_name"] and len(old) > 60_000
    var = census_var(genes)
    assert list(var.columns) == ["feature_id", "feature_name", "feature_length"]
    assert var["feature_id"].tolist()[:3] == genes["feature_id"].tolist()[:3]
    m = map_symbols(["CD3E", "MT-CO1", "ACTB"], genes, id2name=old)
    assert m.n_mapped == 3 and all(i.startswith("ENSG") for i in m.feature_ids)


def test_bad_gene_table_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.csv.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(CorruptFileError, match="garbage.csv.gz"):
        read_gene_table(garbage)
    wrong = tmp_path / "wrong.csv.gz"
    with gzip.open(wrong, "wt") as fh:
        fh.write("E1,A\nE2,B\n")
    with pytest.raises(InputError, match=r"wrong\.csv\.gz: expected 5 columns"):
        read_gene_table(wrong)
    with pytest.raises(InputError, match="missing.csv"):
        read_gene_table(tmp_path / "missing.csv")

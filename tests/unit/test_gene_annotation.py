"""Gene annotation for the patch tokenizer (issue 22, point 3): the GTF reader on hand-written
GENCODE- and Ensembl-style files, the monotone segmentation against brute force, the placement of a
GTF-ordered table on a hand-made case, coverage by kind, and the shipped tables' coverage."""
from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.tokenize.annotation import (MITOCHONDRIAL, _monotone_labels, check_coverage, order_from_gtf_ranked,
                                           placement_coverage, read_gtf)

GENES = Path(__file__).resolve().parents[2] / "resources" / "genes"

GENCODE = """##description: evidence-based annotation of the human genome (GRCh38), version 48
##provider: GENCODE
chr1\tHAVANA\tgene\t11121\t14413\t.\t+\t.\tgene_id "ENSG00000290825.2"; gene_type "lncRNA"; gene_name "DDX11L16"; level 2;
chr1\tHAVANA\ttranscript\t11121\t14413\t.\t+\t.\tgene_id "ENSG00000290825.2"; transcript_id "ENST00000832824.1";
chr1\tHAVANA\texon\t11121\t11211\t.\t+\t.\tgene_id "ENSG00000290825.2"; transcript_id "ENST00000832824.1";
chrM\tENSEMBL\tgene\t577\t647\t.\t+\t.\tgene_id "ENSG00000210049.1"; gene_type "Mt_tRNA"; gene_name "MT-TF"; level 3;
"""
ENSEMBL = """#!genome-build GRCh38.p14
7\tensembl_havana\tgene\t117287120\t117715971\t.\t+\t.\tgene_id "ENSG00000001626"; gene_version "19"; gene_name "CFTR"; gene_source "ensembl_havana"; gene_biotype "protein_coding";
KI270734.1\tensembl\tgene\t131494\t137392\t.\t+\t.\tgene_id "ENSG00000278704"; gene_version "1"; gene_source "ensembl"; gene_biotype "protein_coding";
"""


def test_read_gtf_gencode_gzip_keeps_gene_records_only(tmp_path):
    path = tmp_path / "gencode.gtf.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(GENCODE)
    got = read_gtf(path)
    assert got.to_dict("records") == [
        {"ensembl_id": "ENSG00000290825", "symbol": "DDX11L16", "gene_type": "lncRNA", "chromosome": "1",
         "start": 11121, "end": 14413, "strand": "+"},
        {"ensembl_id": "ENSG00000210049", "symbol": "MT-TF", "gene_type": "Mt_tRNA", "chromosome": "MT",
         "start": 577, "end": 647, "strand": "+"}]


def test_read_gtf_ensembl_style_biotype_no_chr_prefix_and_no_name(tmp_path):
    path = tmp_path / "ensembl.gtf"
    path.write_text(ENSEMBL)
    got = read_gtf(path)
    assert got["chromosome"].tolist() == ["7", "KI270734.1"]
    assert got["gene_type"].tolist() == ["protein_coding", "protein_coding"]
    assert got["symbol"].tolist() == ["CFTR", "ENSG00000278704"]      # no gene_name: the id stands in
    assert got["start"].dtype == np.int64


@pytest.mark.parametrize("text, match", [
    ("chr1\tHAVANA\tgene\t1\t2\t.\t+\n", r"bad\.gtf:1: a GTF line has 9 tab-separated fields, this one 7"),
    ("#c\nchr1\tH\tgene\t1\t2\t.\t+\t.\tgene_name \"A\";\n", r"bad\.gtf:2: gene record without a gene_id"),
    ("chr1\tH\tgene\tone\t2\t.\t+\t.\tgene_id \"G\";\n", r"bad\.gtf:1: start / end 'one' / '2'"),
])
def test_read_gtf_malformed_lines_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.gtf"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=match):
        read_gtf(path)


def test_read_gtf_without_gene_records_or_file_is_an_input_error(tmp_path):
    path = tmp_path / "exons.gtf"
    path.write_text("chr1\tH\texon\t1\t2\t.\t+\t.\tgene_id \"G\";\n")
    with pytest.raises(InputError, match="no 'gene' records"):
        read_gtf(path)
    with pytest.raises(InputError, match="no such file"):
        read_gtf(tmp_path / "absent.gtf")


def test_monotone_labels_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n, k = int(rng.integers(1, 7)), 3
        codes = rng.integers(0, k, n)
        best = min(sum(a != c for a, c in zip(lab, codes))
                   for lab in itertools.product(range(k), repeat=n) if all(np.diff(lab) >= 0))
        got = _monotone_labels(codes, k)
        assert np.all(np.diff(got) >= 0)
        assert int((got != codes).sum()) == best


def test_order_from_gtf_ranked_hand_made_table():
    genes = pd.DataFrame({
        "feature_id": ["A1.1", "G", "A2", "B", "A3", "A5", "D", "A4", "M1", "M2", "S"],
        "feature_name": ["a1", "g", "a2", "b", "a3", "a5", "d", "a4", "MT-TF", "MT-ND1", "s"],
        "feature_type": ["protein_coding"] * 11})
    # D's anchor says chromosome 1 between anchors of 2: one disagreement, the fewest possible
    anchors = pd.DataFrame({"ensembl_id": ["A1", "A2", "A3", "A5", "D", "A4", "S"],
                            "chromosome": ["1", "chr1", "2", "2", "1", "2", "5"]})
    got = order_from_gtf_ranked(genes, anchors)
    assert got["ensembl_id"].tolist() == ["A1", "G", "A2", "B", "A3", "A5", "D", "A4", "M1", "M2", "S"]
    assert got["chromosome"].tolist() == ["1", "1", "1", "1", "2", "2", "2", "2", "MT", "MT", ""]
    assert got["evidence"].tolist() == ["anchor", "interval", "anchor", "boundary", "anchor", "anchor", "discordant",
                                        "anchor", "name", "name", "scaffold"]
    assert got["gtf_rank"].tolist() == list(range(11))


def test_order_from_gtf_ranked_refuses_a_split_mt_block():
    genes = pd.DataFrame({"feature_id": ["A", "M1", "B", "M2"], "feature_name": ["a", "MT-TF", "b", "MT-ND1"],
                          "feature_type": ["x"] * 4})
    with pytest.raises(InputError, match="not one block"):
        order_from_gtf_ranked(genes, pd.DataFrame({"ensembl_id": ["A"], "chromosome": ["1"]}))


def test_placement_coverage_and_check_name_the_short_kinds():
    kinds = ["protein_coding", "protein_coding", "lncRNA", None, "Mt_tRNA", "protein_coding"]
    names = ["A", "B", "C", "D", "MT-TF", "MT-ND1"]
    placed = np.array([True, False, True, False, False, True])
    cov = placement_coverage(kinds, placed, names)
    assert cov == {"protein_coding": {"placed": 2, "total": 3}, "lncRNA": {"placed": 1, "total": 1},
                   "unknown": {"placed": 0, "total": 1}, "Mt_tRNA": {"placed": 0, "total": 1},
                   MITOCHONDRIAL: {"placed": 1, "total": 2}, "all": {"placed": 3, "total": 6}}
    check_coverage(cov, {"protein_coding": 2 / 3, "lncRNA": 1.0, "absent_kind": 1.0}, source="s")
    with pytest.raises(InputError, match=r"s: .*mitochondrial 1 of 2 placed \(50\.0% < 100\.0%\); "
                                         r"protein_coding 2 of 3 placed \(66\.7% < 99\.0%\)"):
        check_coverage(cov, {"protein_coding": 0.99, MITOCHONDRIAL: 1.0}, source="s")


def test_shipped_tables_place_99_percent_of_protein_coding_and_every_mt_gene():
    from cellmamba.genes import read_gene_table
    from cellmamba.tokenize.patch import read_positions

    table = read_gene_table(GENES / "cellxgene_genes_homo_sapiens_gencode48.csv.gz")
    order = order_from_gtf_ranked(table, read_positions(GENES / "human_gene_positions_hg38.tsv.gz"))
    cov = placement_coverage(table["feature_type"], (order["chromosome"] != "").to_numpy(), table["feature_name"])
    assert cov[MITOCHONDRIAL] == {"placed": 37, "total": 37}
    assert cov["protein_coding"]["placed"] / cov["protein_coding"]["total"] >= 0.99
    # the order is the chromosome order 1..22, X, Y, MT, each chromosome one block
    chroms = order.loc[order["chromosome"] != "", "chromosome"]
    blocks = chroms[chroms != chroms.shift()].tolist()
    assert blocks == [str(i) for i in range(1, 23)] + ["X", "Y", "MT"]


def test_read_positions_takes_a_gtf_and_genomic_order_follows_its_coordinates(tmp_path):
    from cellmamba.tokenize.patch import genomic_order, read_positions

    path = tmp_path / "genes.gtf"
    path.write_text(GENCODE + ENSEMBL.split("\n", 1)[1])
    positions = read_positions(path)
    assert positions["ensembl_id"].tolist() == ["ENSG00000290825", "ENSG00000001626", "ENSG00000210049"]
    assert positions["chromosome"].tolist() == ["1", "7", "MT"]       # the scaffold gene is left out
    vocab = ["ENSG00000210049.1", "ENSG00000278704", "ENSG00000001626", "ENSG00000290825"]
    order = genomic_order(vocab, positions, unplaced="drop")
    assert order.genes.tolist() == [3, 2, 0] and order.n_unplaced == 1

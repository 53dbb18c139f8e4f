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


# the hand-made table of test_order_from_gtf_ranked_hand_made_table, with coordinates for the anchors
# that contradict the GTF order (A2 before A1, A4 before A3): the order must be GENCODE's, not theirs
HAND_GENES = pd.DataFrame({
    "feature_id": ["A1.1", "G", "A2", "B", "A3", "A5", "D", "A4", "M1", "M2", "S"],
    "feature_name": ["a1", "g", "a2", "b", "a3", "a5", "d", "a4", "MT-TF", "MT-ND1", "s"],
    "feature_version": ["1"] * 11, "feature_length": [100] * 11,
    "feature_type": ["protein_coding"] * 4 + ["lncRNA"] * 4 + ["Mt_tRNA", "Mt_rRNA", "protein_coding"]})
HAND_ANCHORS = pd.DataFrame({"ensembl_id": ["A1", "A2", "A3", "A5", "D", "A4", "S"],
                             "chromosome": ["1", "1", "2", "2", "1", "2", "5"],
                             "start": [900, 100, 500, 600, 50, 10, 7]})


def test_gene_positions_table_keeps_gtf_order_and_no_made_up_coordinate():
    from cellmamba.tokenize.annotation import gene_positions_table

    got = gene_positions_table(HAND_GENES, HAND_ANCHORS)
    assert got["ensembl_ids"].tolist() == ["A1", "G", "A2", "B", "A3", "A5", "D", "A4", "M1", "M2", "S"]
    assert got["gtf_rank"].tolist() == list(range(11))
    # a coordinate only where an anchor of that chromosome gave one (D's anchor is discordant)
    assert [None if pd.isna(s) else int(s) for s in got["start"]] == [900, None, 100, None, 500, 600, None, 10,
                                                                      None, None, None]
    assert got["gene_type"].iloc[-1] == "protein_coding" and got["chromosome"].iloc[-1] == ""


def test_written_gene_positions_order_the_vocabulary_by_gtf_rank(tmp_path):
    from cellmamba.tokenize.annotation import write_gene_positions
    from cellmamba.tokenize.patch import genomic_order, read_positions

    HAND_GENES.to_csv(tmp_path / "genes.csv.gz", header=False, index=False)
    anchors = HAND_ANCHORS.rename(columns={"ensembl_id": "ensembl_ids"})
    anchors.to_csv(tmp_path / "anchors.tsv", sep="\t", index=False)
    counts = write_gene_positions(tmp_path / "genes.csv.gz", tmp_path / "anchors.tsv", tmp_path / "out.tsv.gz")
    assert counts == {"anchor": 5, "boundary": 1, "discordant": 1, "interval": 1, "name": 2, "scaffold": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []      # no temporary left
    positions = read_positions(tmp_path / "out.tsv.gz")
    assert positions["gtf_rank"].tolist() == list(range(10))                         # S (scaffold) left out
    vocab = ["S", "M2", "A4", "G", "A1", "B.3", "A3", "X9"]
    order = genomic_order(vocab, positions, unplaced="append")
    # GTF order A1 G B | A3 A4 | M2; the anchors' coordinates would put A4 (10) before A3 (500): not used
    assert [vocab[g] for g in order.genes] == ["A1", "G", "B.3", "A3", "A4", "M2", "S", "X9"]
    assert order.n_placed == 6 and order.n_unplaced == 2


def test_read_positions_needs_start_unless_ranked_and_integer_ranks(tmp_path):
    from cellmamba.tokenize.patch import read_positions

    path = tmp_path / "p.tsv"
    pd.DataFrame({"ensembl_ids": ["A", "B"], "chromosome": ["1", "1"], "start": ["5", ""]}).to_csv(
        path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"p\.tsv: column 'start' holds a non-integer value ''"):
        read_positions(path)
    pd.DataFrame({"ensembl_ids": ["A", "B"], "chromosome": ["1", "1"], "start": ["5", ""],
                  "gtf_rank": ["1", "0.5"]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=r"column 'gtf_rank' holds a non-integer value '0\.5'"):
        read_positions(path)
    pd.DataFrame({"ensembl_ids": ["A", "B"], "chromosome": ["1", "1"], "start": ["5", ""],
                  "gtf_rank": ["1", "0"]}).to_csv(path, sep="\t", index=False)
    got = read_positions(path)
    assert got["ensembl_id"].tolist() == ["B", "A"] and got["start"].isna().tolist() == [True, False]


def test_gene_kinds_by_id_unknown_where_the_table_lacks_the_gene():
    from cellmamba.tokenize.annotation import gene_kinds

    kinds, names = gene_kinds(["M1.2", "ZZ", "A1"], HAND_GENES)
    assert kinds.tolist() == ["Mt_tRNA", "unknown", "protein_coding"] and names.tolist() == ["MT-TF", "", "a1"]
    with pytest.raises(InputError, match="no 'feature_type' column"):
        gene_kinds(["A1"], HAND_GENES.drop(columns="feature_type"))


def test_shipped_gencode48_positions_cover_what_the_default_threshold_asks(tmp_path):
    """The default annotation (rule gene_positions) passes the default min_coverage on the whole
    GENCODE 48 vocabulary; the UCSC table alone does not (19,293 of 20,120 protein-coding genes,
    1 of 37 mitochondrial ones)."""
    from cellmamba.genes import read_gene_table
    from cellmamba.tokenize import PatchConfig
    from cellmamba.tokenize.annotation import gene_kinds, write_gene_positions
    from cellmamba.tokenize.patch import genomic_order, read_positions

    gene_table = GENES / "cellxgene_genes_homo_sapiens_gencode48.csv.gz"
    ucsc = GENES / "human_gene_positions_hg38.tsv.gz"
    write_gene_positions(gene_table, ucsc, tmp_path / "gp.tsv.gz")
    table = read_gene_table(gene_table)
    kinds, names = gene_kinds(table["feature_id"], table)
    need = PatchConfig().min_coverage
    for source, ok in ((tmp_path / "gp.tsv.gz", True), (ucsc, False)):
        order = genomic_order(table["feature_id"], read_positions(source))
        placed = np.zeros(len(table), bool)
        placed[order.genes[:order.n_placed]] = True
        cov = placement_coverage(kinds, placed, names)
        if ok:
            check_coverage(cov, need, source=str(source))
        else:
            # its one MT- gene is MT-TS1 at chr1:632,614 (a nuclear copy)
            with pytest.raises(InputError, match="mitochondrial 1 of 37 placed.*protein_coding 19,293 of 20,120"):
                check_coverage(cov, need, source=str(source))

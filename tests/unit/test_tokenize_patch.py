"""Patch tokenizer: genomic order from a position table, sparse values and dense patches,
against a naive reference (Python sorting of dense rows)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellmamba.errors import InputError
from cellmamba.tokenize import (PatchConfig, genomic_order, read_positions, to_patches, to_patches_batch,
                                tokenize_patch)

HEADER = ["entrez_id", "symbol", "ensembl_ids", "chromosome", "start", "end", "strand", "gene_type"]


def write_positions(path, rows):
    """rows: (ensembl_ids, chromosome, start) in the raw table's layout."""
    table = pd.DataFrame([(i, f"S{i}", e, c, s, s + 10, "+", "protein-coding") for i, (e, c, s) in enumerate(rows)],
                         columns=HEADER)
    table.to_csv(path, sep="\t", index=False, compression="gzip")
    return path


def natural_key(chrom: str) -> int:
    return int(chrom) if chrom.isdigit() else {"X": 23, "Y": 24, "MT": 25}[chrom]


def test_genomic_order_hand_case(tmp_path):
    path = write_positions(tmp_path / "pos.tsv.gz", [
        ("ENSG05", "10", 50),                 # chr10 after chr2 (natural, not lexical, order)
        ("ENSG04", "2", 900),
        ("ENSG03;ENSG07", "X", 10),          # two ids share a row
        ("ENSG02", "1", 500), ("ENSG01", "1", 500),  # same start: Ensembl id breaks the tie
        ("ENSG06", "MT", 1),
        ("ENSG08", "1_KI270706v1_random", 5),  # another contig: unplaced
        ("", "3", 7),                          # row without an Ensembl id
        ("ENSG09", "Y", 3), ("ENSG09", "4", 99),  # listed twice: first in genomic order wins
    ])
    positions = read_positions(path)
    vocab = ["ENSG07", "ENSG08", "ENSG01", "ENSG99", "ENSG06", "ENSG02", "ENSG05", "ENSG03", "ENSG04", "ENSG09.3"]
    order = genomic_order(vocab, positions, unplaced="drop")
    expected = ["ENSG01", "ENSG02", "ENSG04", "ENSG09.3", "ENSG05", "ENSG03", "ENSG07", "ENSG06"]
    assert [vocab[g] for g in order.genes] == expected
    assert order.n_placed == 8 and order.n_unplaced == 2
    assert order.position[vocab.index("ENSG08")] == -1 and order.position[vocab.index("ENSG99")] == -1
    appended = genomic_order(vocab, positions, unplaced="append")
    assert [vocab[g] for g in appended.genes] == expected + ["ENSG08", "ENSG99"]  # vocabulary order


def test_patch_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    n_cells, n_genes = 30, 70
    vocab = [f"ENSG{j:05d}" for j in range(n_genes)]
    chroms = ["1", "2", "10", "X", "Y", "MT", "GL000009.2"]
    rows = [(vocab[j], str(rng.choice(chroms)), int(rng.integers(0, 20))) for j in range(n_genes - 5)]
    positions = read_positions(write_positions(tmp_path / "pos.tsv.gz", rows))
    placed = sorted((natural_key(c), s, e) for e, c, s in rows if c != "GL000009.2")
    ref_order = [vocab.index(e) for _, _, e in placed]
    dense = (rng.geometric(0.4, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.5)).astype(np.float32)
    dense[1] = 0
    for unplaced in ("drop", "append"):
        order = genomic_order(vocab, positions, unplaced=unplaced)
        full_order = ref_order + ([j for j in range(n_genes) if j not in ref_order] if unplaced == "append" else [])
        assert order.genes.tolist() == full_order
        cfg = PatchConfig(patch_size=8, unplaced=unplaced)
        batch = tokenize_patch(sp.csr_matrix(dense), order, cfg)
        dropped = 0
        for i, row in enumerate(dense):
            total = float(row.sum())
            ref_vec = np.array([np.float32(np.log1p(float(row[j]) / total * 1e4)) if row[j] > 0 else 0.0
                                for j in full_order], dtype=np.float32)
            tokens, values = batch.cell(i)
            assert tokens.tolist() == np.flatnonzero(ref_vec).tolist(), f"cell {i}"
            np.testing.assert_allclose(values, ref_vec[tokens], rtol=1e-6)
            dense_patches = to_patches(tokens, values, n_features=len(full_order), patch_size=8)
            n_patches = -(-len(full_order) // 8)
            assert dense_patches.shape == (n_patches, 8)
            padded = np.zeros(n_patches * 8, np.float32)
            padded[:len(full_order)] = ref_vec
            np.testing.assert_allclose(dense_patches.ravel(), padded, rtol=1e-6)
            dropped += sum(row[j] > 0 for j in range(n_genes) if j not in full_order)
        assert batch.stats["n_nonzero_unplaced"] == dropped
        assert (dropped > 0) == (unplaced == "drop")
    both = to_patches_batch([batch.cell(0), batch.cell(1)], n_features=order.n_features, patch_size=8)
    assert both.shape == (2, -(-order.n_features // 8), 8) and not both[1].any()


@pytest.mark.parametrize("kwargs, match", [
    ({"patch_size": 0}, "patch_size"), ({"unplaced": "keep"}, "unplaced"), ({"target_sum": -1.0}, "target_sum"),
    ({"min_coverage": [0.99]}, "min_coverage must map"), ({"min_coverage": {"lncRNA": 1.5}}, r"min_coverage\['lncRNA'\]"),
    ({"min_coverage": {"lncRNA": True}}, "min_coverage"),
])
def test_patch_config_rejects(kwargs, match):
    with pytest.raises(InputError, match=match):
        PatchConfig(**kwargs)


def test_genomic_order_no_position(tmp_path):
    positions = read_positions(write_positions(tmp_path / "p.tsv.gz", [("ENSG1", "1", 5)]))
    with pytest.raises(InputError, match="none of the 2 genes"):
        genomic_order(["ENSG7", "ENSG8"], positions)


def test_real_position_table(repo_root):
    positions = read_positions(repo_root / "resources/genes/human_gene_positions_hg38.tsv.gz")
    assert positions["ensembl_id"].is_unique and len(positions) > 20_000
    order = genomic_order(positions["ensembl_id"].to_numpy()[::-1], positions)
    chrom = positions.set_index("ensembl_id")["chromosome"]
    ranks = [natural_key(c) for c in chrom.loc[positions["ensembl_id"].to_numpy()[::-1][order.genes]]]
    assert ranks == sorted(ranks)

"""Legacy gene symbols through the alias table: the build script on a hand-built org.Hs.eg.db-shaped
database, the shipped table, and the mapping to the vocabulary."""
from __future__ import annotations

import logging
import runpy
import sqlite3

import numpy as np
import pandas as pd

from cellmamba.genes import map_symbols, read_aliases
from cellmamba.tasks import vocabulary_index

ALIASES = "resources/genes/human_gene_aliases_ncbi2022.tsv.gz"


def _org_db(path):
    """genes: 1 JCHAIN, 2 MACROH2A1, 3 SEPTIN2, 4 SEPTIN6, 5 CD3E, 6 OLDNAME (a current symbol)."""
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE gene_info (_id INTEGER, gene_name TEXT, symbol TEXT);
        CREATE TABLE alias (_id INTEGER, alias_symbol TEXT);
        CREATE TABLE ensembl (_id INTEGER, ensembl_id TEXT);
    """)
    con.executemany("INSERT INTO gene_info VALUES (?, ?, ?)",
                    [(1, "", "JCHAIN"), (2, "", "MACROH2A1"), (3, "", "SEPTIN2"), (4, "", "SEPTIN6"), (5, "", "CD3E"),
                     (6, "", "OLDNAME")])
    con.executemany("INSERT INTO alias VALUES (?, ?)",
                    [(1, "IGJ"), (1, "JCHAIN"), (2, "H2AFY"), (3, "SEPT2"), (4, "SEPT2"), (4, "SEPT6"),
                     (5, "OLDNAME"), (5, "T3E")])
    con.executemany("INSERT INTO ensembl VALUES (?, ?)",
                    [(1, "ENSG00000132465"), (2, "ENSG00000113648"), (4, "ENSG00000125354"), (5, "ENSG00000198851"),
                     (5, "ENSG99999999999")])
    con.commit()
    con.close()


def test_build_script_keeps_only_unambiguous_aliases(tmp_path, repo_root):
    db = tmp_path / "org.Hs.eg.sqlite"
    _org_db(db)
    out = tmp_path / "aliases.tsv.gz"
    build = runpy.run_path(str(repo_root / "scripts" / "build_gene_aliases.py"))
    assert build["main"]([str(db), str(out)]) == 0
    table = read_aliases(out)
    rows = {r.alias: (r.symbol, r.ensembl_id) for r in table.itertuples()}
    # SEPT2 names two genes, JCHAIN is its own symbol, OLDNAME is another gene's symbol: all left out;
    # CD3E has two Ensembl ids, so its alias keeps an empty ensembl_id
    assert rows == {"IGJ": ("JCHAIN", "ENSG00000132465"), "H2AFY": ("MACROH2A1", "ENSG00000113648"),
                    "SEPT6": ("SEPTIN6", "ENSG00000125354"), "T3E": ("CD3E", "")}
    again = tmp_path / "again.tsv.gz"
    build["main"]([str(db), str(again)])
    assert again.read_bytes() == out.read_bytes()  # re-runnable, byte-identical


def test_shipped_table_is_small_documented_and_maps_legacy_symbols(repo_root):
    path = repo_root / ALIASES
    assert path.stat().st_size < 1_000_000
    table = read_aliases(path)
    rows = table.set_index("alias")
    assert rows.loc["IGJ", "symbol"] == "JCHAIN" and rows.loc["H2AFY", "symbol"] == "MACROH2A1"
    assert "SEPT2" not in rows.index  # SEPTIN2 and SEPTIN6: ambiguous
    assert not table["alias"].isin(table["symbol"]).any()
    readme = (repo_root / "resources" / "README.md").read_text()
    assert "human_gene_aliases_ncbi2022.tsv.gz" in readme and "Artistic-2.0" in readme
    assert "public domain" in readme and "build_gene_aliases.py" in readme


def test_legacy_symbols_reach_the_vocabulary(repo_root, caplog):
    vocab = pd.DataFrame({"feature_id": ["ENSG00000132465", "ENSG00000113648", "ENSG00000168385",
                                         "ENSG00000125354", "ENSG00000198851"],
                          "feature_name": ["JCHAIN", "MACROH2A1", "SEPTIN2", "SEPTIN6", "CD3E"]})
    var = pd.DataFrame(index=["IGJ", "H2AFY", "SEPT2", "CD3E", "NOTAGENE"])
    assert list(vocabulary_index(var, vocab, source="old")) == [-1, -1, -1, 4, -1]  # without the table
    aliases = read_aliases(repo_root / ALIASES)
    with caplog.at_level(logging.INFO, logger="cellmamba.genes"):
        index = vocabulary_index(var, vocab, source="old", aliases=aliases)
    assert list(index) == [0, 1, -1, 4, -1]
    assert "old: 2 legacy symbols rescued through the alias table" in caplog.text


def test_alias_never_displaces_a_direct_match_and_uses_the_ensembl_id_as_fallback():
    table = pd.DataFrame({"feature_id": ["E1", "E2"], "feature_name": ["NEW1", "OTHER"]})
    aliases = pd.DataFrame({"alias": ["OLD1", "OLD2"], "symbol": ["NEW1", "GONE"], "ensembl_id": ["E1", "E2"]})
    m = map_symbols(np.array(["NEW1", "OLD1", "OLD2"]), table, aliases=aliases)
    # OLD1 reaches E1, already taken by the direct NEW1: a duplicate; OLD2's symbol is unknown, its id is not
    assert list(m.feature_ids) == ["E1", "", "E2"] and m.duplicates == ["OLD1"] and m.n_via_alias == 1

#!/usr/bin/env python3
"""Build resources/genes/human_gene_aliases_ncbi2022.tsv.gz: legacy human gene symbol -> current symbol.

Source: the Bioconductor annotation package org.Hs.eg.db 3.16 (NCBI Entrez Gene of 2022-Sep12,
Ensembl of 2022-Jun28) as Debian ships it (r-bioc-org.hs.eg.db_3.16.0-1_all.deb; its
org.Hs.eg.sqlite has tables alias(_id, alias_symbol), gene_info(_id, gene_name, symbol),
ensembl(_id, ensembl_id)). Licence: org.Hs.eg.db is Artistic-2.0; the NCBI Gene data it holds
are in the public domain.

Kept: only unambiguous aliases, so that a rescued symbol is never a guess:

- an alias equal to its own gene's current symbol is not an alias (dropped);
- an alias naming more than one current gene (SEPT2 -> SEPTIN2 and SEPTIN6) is dropped;
- an alias that is itself the current symbol of a gene (another gene's name) is dropped.

Columns (tab-separated, with a header): ``alias``, ``symbol`` (the current NCBI symbol),
``ensembl_id`` (the gene's Ensembl id when it has exactly one, else empty). Rows sorted by
alias; gzip without name or mtime, so a rebuild from the same package is byte-identical.

Usage::

    dpkg-deb -x r-bioc-org.hs.eg.db_3.16.0-1_all.deb /tmp/orghs
    python scripts/build_gene_aliases.py \
        /tmp/orghs/usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite \
        resources/genes/human_gene_aliases_ncbi2022.tsv.gz
"""
from __future__ import annotations

import argparse
import gzip
import os
import sqlite3
import sys
from pathlib import Path

HEADER = ("alias", "symbol", "ensembl_id")


def alias_rows(sqlite_path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """(alias, symbol, ensembl_id) of every unambiguous alias, sorted by alias."""
    con = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        symbol = dict(con.execute("SELECT _id, symbol FROM gene_info"))
        ensembl: dict[int, set[str]] = {}
        for gid, ens in con.execute("SELECT _id, ensembl_id FROM ensembl"):
            ensembl.setdefault(gid, set()).add(ens)
        targets: dict[str, set[int]] = {}
        for gid, alias in con.execute("SELECT _id, alias_symbol FROM alias"):
            alias = (alias or "").strip()
            if alias and gid in symbol and alias != symbol[gid]:
                targets.setdefault(alias, set()).add(gid)
    finally:
        con.close()
    current = set(symbol.values())
    rows = []
    for alias, gids in targets.items():
        if len(gids) != 1 or alias in current:
            continue
        (gid,) = gids
        ids = ensembl.get(gid, set())
        rows.append((alias, symbol[gid], next(iter(ids)) if len(ids) == 1 else ""))
    return sorted(rows)


def write_table(rows, out: str | os.PathLike) -> None:
    """Gzipped TSV with a header, written to a temporary file and renamed into place."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=9,
                                                  mtime=0) as fh:
            fh.write(("\t".join(HEADER) + "\n").encode())
            for row in rows:
                fh.write(("\t".join(row) + "\n").encode())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sqlite", help="org.Hs.eg.sqlite of org.Hs.eg.db 3.16")
    parser.add_argument("out", help="the gzipped TSV to write")
    args = parser.parse_args(argv)
    if not Path(args.sqlite).is_file():
        print(f"{args.sqlite}: no such file (expected org.Hs.eg.sqlite)", file=sys.stderr)
        return 1
    rows = alias_rows(args.sqlite)
    write_table(rows, args.out)
    print(f"{args.out}: {len(rows)} unambiguous aliases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

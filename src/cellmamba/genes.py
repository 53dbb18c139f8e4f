"""Gene tables and symbol -> Ensembl id mapping.

The census gene table (the vocabulary) is keyed by Ensembl ids. Datasets that only carry gene
symbols are mapped through the CELLxGENE gene reference (GENCODE 48, GTF order) and, for
symbols renamed since, through an older id -> name table (GENCODE 44) and an alias table of
legacy symbols (NCBI Gene 2022, IGJ -> JCHAIN; resources/genes/human_gene_aliases_ncbi2022.tsv.gz,
built by scripts/build_gene_aliases.py, unambiguous aliases only). A symbol that cannot be mapped
to exactly one Ensembl id is never guessed: it is counted, logged and left out.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import CorruptFileError, InputError
from .keys import VAR_FEATURE_ID, VAR_FEATURE_LENGTH, VAR_FEATURE_NAME

__all__ = [
    "read_gene_table", "read_id2name", "read_aliases", "census_var", "SymbolMapping", "map_symbols",
    "looks_like_ensembl", "ALIAS_COLUMNS",
]

logger = logging.getLogger(__name__)

#: columns of resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz (no header)
GENE_TABLE_COLUMNS = (VAR_FEATURE_ID, VAR_FEATURE_NAME, "feature_version", VAR_FEATURE_LENGTH, "feature_type")


def _read_headerless_csv(path: str | os.PathLike, names: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected a gene table)") from exc
    except (UnicodeDecodeError, OSError, EOFError, zlib.error, pd.errors.ParserError) as exc:
        raise CorruptFileError(f"{path}: not a readable CSV gene table ({type(exc).__name__}: {exc})") from exc
    if table.shape[1] != len(names):
        raise InputError(f"{path}: expected {len(names)} columns {list(names)} (no header), found {table.shape[1]}")
    table.columns = list(names)
    if table.empty:
        raise InputError(f"{path}: the gene table is empty")
    return table


def read_gene_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read the CELLxGENE gene reference (no header: gene_id, gene_name, version, length, type).

    Returns
    -------
    DataFrame, one row per gene in file (GTF) order, columns ``feature_id``, ``feature_name``,
    ``feature_version``, ``feature_length`` (int64), ``feature_type``; default RangeIndex.
    """
    table = _read_headerless_csv(path, GENE_TABLE_COLUMNS)
    if table[VAR_FEATURE_ID].duplicated().any():
        dup = table.loc[table[VAR_FEATURE_ID].duplicated(), VAR_FEATURE_ID].head(5).tolist()
        raise InputError(f"{path}: duplicated gene ids {dup}")
    try:
        table[VAR_FEATURE_LENGTH] = table[VAR_FEATURE_LENGTH].astype(np.int64)
    except ValueError as exc:
        raise InputError(f"{path}: column 4 (length) must hold integers ({exc})") from exc
    return table


def read_id2name(path: str | os.PathLike) -> pd.DataFrame:
    """Read an Ensembl id -> symbol table (no header: id, name); columns feature_id, feature_name."""
    return _read_headerless_csv(path, (VAR_FEATURE_ID, VAR_FEATURE_NAME))


#: columns of resources/genes/human_gene_aliases_ncbi2022.tsv.gz (tab-separated, with a header)
ALIAS_COLUMNS = ("alias", "symbol", "ensembl_id")


def read_aliases(path: str | os.PathLike) -> pd.DataFrame:
    """Read a legacy-symbol alias table (TSV with header alias, symbol, ensembl_id; ensembl_id may
    be empty). Each alias names one current gene (scripts/build_gene_aliases.py)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected the gene alias table)") from exc
    except (UnicodeDecodeError, OSError, EOFError, zlib.error, pd.errors.ParserError) as exc:
        raise CorruptFileError(f"{path}: not a readable alias table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in ALIAS_COLUMNS if c not in table]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; expected a header {list(ALIAS_COLUMNS)}")
    if table["alias"].duplicated().any():
        dup = table.loc[table["alias"].duplicated(), "alias"].head(5).tolist()
        raise InputError(f"{path}: aliases {dup} appear twice; each alias must name one gene")
    return table[list(ALIAS_COLUMNS)]


def census_var(gene_table: pd.DataFrame) -> pd.DataFrame:
    """The census var form of a gene table: columns feature_id, feature_name, feature_length.

    Row order is kept (it is the vocabulary order); the index is a RangeIndex (the var
    ``soma_joinid``).
    """
    missing = [c for c in (VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_LENGTH) if c not in gene_table]
    if missing:
        raise InputError(f"gene table: missing column(s) {missing}")
    var = gene_table[[VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_LENGTH]].reset_index(drop=True).copy()
    var[VAR_FEATURE_ID] = var[VAR_FEATURE_ID].astype(str)
    var[VAR_FEATURE_NAME] = var[VAR_FEATURE_NAME].astype(str)
    var[VAR_FEATURE_LENGTH] = var[VAR_FEATURE_LENGTH].astype(np.int64)
    return var


def looks_like_ensembl(names) -> bool:
    """True when most names are Ensembl gene ids (``ENSG...``/``ENSMUSG...``)."""
    names = pd.Index(names).astype(str)
    return len(names) > 0 and bool(names.str.match(r"^ENS[A-Z]*G\d+").mean() > 0.5)


@dataclass(frozen=True)
class SymbolMapping:
    """Result of :func:`map_symbols`.

    ``feature_ids[i]`` is the Ensembl id of input symbol ``i``, or ``""`` when it was not
    mapped (then it is listed in exactly one of ``unknown``, ``ambiguous``, ``duplicates``).
    """

    feature_ids: np.ndarray
    n_direct: int
    n_via_id2name: int
    unknown: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    n_via_alias: int = 0  # legacy symbols rescued through the alias table

    @property
    def mapped(self) -> np.ndarray:
        """Boolean mask (n_symbols,): the symbol was mapped to one Ensembl id."""
        return self.feature_ids != ""

    @property
    def n_mapped(self) -> int:
        return int(self.mapped.sum())


def map_symbols(symbols, gene_table: pd.DataFrame, *, id2name: pd.DataFrame | None = None,
                aliases: pd.DataFrame | None = None, source: str = "dataset") -> SymbolMapping:
    """Map gene symbols to the Ensembl ids of ``gene_table``.

    A symbol is mapped when it names exactly one gene of ``gene_table`` (``feature_name``);
    otherwise, when ``id2name`` is given, when the older table gives it exactly one id that is
    in ``gene_table`` (renamed genes). Symbols naming several genes are *ambiguous*, symbols
    found nowhere are *unknown*, and a second symbol reaching an id already taken (direct
    matches win) is a *duplicate*: all three are left out, counted and logged, never guessed.

    Parameters
    ----------
    symbols
        (n_symbols,) gene symbols, e.g. a symbol-keyed ``adata.var_names``.
    gene_table
        Columns ``feature_id``, ``feature_name`` (see :func:`read_gene_table`).
    id2name
        Optional fallback table with columns ``feature_id``, ``feature_name``.
    aliases
        Optional last fallback (:func:`read_aliases`): a symbol still unknown that is a legacy
        alias is mapped to its current symbol's one gene of ``gene_table``, else to the alias
        row's ``ensembl_id`` when that is in ``gene_table``.
    source
        Name used in log and error messages (the file the symbols came from).

    Raises
    ------
    InputError
        When no symbol maps to a gene of the table.
    """
    symbols = pd.Index(symbols).astype(str)
    known_ids = pd.Index(gene_table[VAR_FEATURE_ID].astype(str))
    by_name = gene_table.groupby(VAR_FEATURE_NAME, sort=False)[VAR_FEATURE_ID].agg(list)
    fallback = None
    if id2name is not None:
        old = id2name[id2name[VAR_FEATURE_ID].isin(known_ids)]
        fallback = old.groupby(VAR_FEATURE_NAME, sort=False)[VAR_FEATURE_ID].agg(lambda s: sorted(set(s)))

    alias_of = None
    if aliases is not None:
        alias_of = dict(zip(aliases["alias"].astype(str), zip(aliases["symbol"].astype(str),
                                                             aliases["ensembl_id"].astype(str))))

    def _via_alias(sym):
        symbol, ens = alias_of[sym]
        hits = by_name.get(symbol)
        if hits is not None:
            return hits if len(hits) == 1 else None
        return [ens] if ens and ens in known_set else None

    known_set = set(known_ids)
    ids = np.full(len(symbols), "", dtype=object)
    via = np.zeros(len(symbols), dtype=np.int8)  # 1 direct, 2 through id2name, 3 through the alias table
    unknown, ambiguous = [], []
    for i, sym in enumerate(symbols):
        hits = by_name.get(sym)
        if hits is not None:
            if len(hits) == 1:
                ids[i], via[i] = hits[0], 1
            else:
                ambiguous.append(sym)
            continue
        hits = fallback.get(sym) if fallback is not None else None
        if hits is None and alias_of is not None and sym in alias_of:
            hits = _via_alias(sym)
            if hits is not None:
                ids[i], via[i] = hits[0], 3
                continue
        if hits is None:
            unknown.append(sym)
        elif len(hits) == 1:
            ids[i], via[i] = hits[0], 2
        else:
            ambiguous.append(sym)

    # one id per gene: direct matches first, then fallback matches, in input order
    duplicates: list[str] = []
    taken: set[str] = set()
    for level in (1, 2, 3):
        for i in np.flatnonzero(via == level):
            if ids[i] in taken:
                duplicates.append(symbols[i])
                ids[i], via[i] = "", 0
            else:
                taken.add(ids[i])
    ids = ids.astype(str)
    result = SymbolMapping(ids, int((via == 1).sum()), int((via == 2).sum()), unknown, ambiguous, duplicates,
                           n_via_alias=int((via == 3).sum()))
    logger.info("%s: %d of %d symbols mapped to Ensembl ids (%d direct, %d through the id->name table); "
                "left out: %d unknown, %d ambiguous, %d duplicate", source, result.n_mapped, len(symbols),
                result.n_direct, result.n_via_id2name, len(unknown), len(ambiguous), len(duplicates))
    if aliases is not None:
        logger.info("%s: %d legacy symbols rescued through the alias table (e.g. %s)", source, result.n_via_alias,
                    list(symbols[via == 3][:5]))
    for label, names in (("unknown", unknown), ("ambiguous", ambiguous), ("duplicate", duplicates)):
        if names:
            logger.info("%s: %s symbols (first 20): %s", source, label, names[:20])
    if result.n_mapped == 0:
        raise InputError(f"{source}: none of its {len(symbols)} gene symbols maps to a gene of the reference "
                         f"table (first symbols: {list(symbols[:5])}); expected symbols such as "
                         f"{list(gene_table[VAR_FEATURE_NAME].head(3))}")
    return result

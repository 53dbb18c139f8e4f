"""Gene sets (pathways) for the pathway-aware contrastive loss: GMT reader and mapping of
gene symbols to token ids.

A GMT file holds one set per line: ``name <TAB> description <TAB> gene <TAB> gene ...``
(plain or gzip-compressed, by the ``.gz`` suffix). Shipped sets (resources/gene_sets/, see
resources/README.md): MSigDB hallmark (50), Reactome (1,615, from MSigDB C2:CP v7.5.1) and
GO biological process (9,006 sets of 5-500 genes). No KEGG-derived sets: KEGG's terms
restrict redistribution.

Symbols map to token ids through a :class:`~cellmamba.vocab.Vocabulary` (``feature_names``);
a symbol held by several genes of the vocabulary maps to the first (lowest token id).
Unmapped symbols are counted and logged; sets with fewer than ``min_genes`` mapped genes are
dropped (a set needs two genes to give a positive pair).
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..errors import CorruptFileError, InputError
from ..vocab import N_SPECIAL, Vocabulary

__all__ = ["GeneSets", "read_gmt", "map_gene_sets", "load_gene_sets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneSets:
    """Gene sets as token ids.

    Attributes
    ----------
    names : tuple of str, (n_sets,)
        Set names (GMT column 1), in file order.
    members : tuple of numpy int64 arrays
        Sorted, unique token ids of each set (every id >= N_SPECIAL), at least 2 per set.
    """

    names: tuple[str, ...]
    members: tuple[np.ndarray, ...]

    def __post_init__(self):
        if len(self.names) != len(self.members):
            raise InputError(f"GeneSets: {len(self.names)} names but {len(self.members)} member arrays")
        for name, m in zip(self.names, self.members):
            m = np.asarray(m)
            if m.ndim != 1 or m.shape[0] < 2 or m.dtype.kind not in "iu" or (m.size and int(m.min()) < N_SPECIAL):
                raise InputError(f"GeneSets: set {name!r} must hold >= 2 gene token ids (>= {N_SPECIAL}), got {m!r}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def n_genes(self) -> int:
        """Number of distinct genes over all sets."""
        return int(np.unique(np.concatenate(self.members)).shape[0]) if self.members else 0

    def concat(self, other: "GeneSets") -> "GeneSets":
        """The sets of ``self`` followed by those of ``other``."""
        return GeneSets(self.names + other.names, self.members + other.members)


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT file (``.gz`` compressed or plain).

    Parameters
    ----------
    path
        The file; one set per line: name, description, then gene symbols, tab-separated.

    Returns
    -------
    dict
        Set name -> gene symbols in file order (duplicates and empty fields removed).

    Raises
    ------
    InputError
        Missing file, a line with fewer than 3 fields, or a set name seen twice.
    CorruptFileError
        Not readable as text (or a broken gzip stream).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such gene set file")
    opener = gzip.open if path.suffix == ".gz" else open
    sets: dict[str, list[str]] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 3 or not fields[0].strip():
                    raise InputError(f"{path}:{lineno}: expected 'name<TAB>description<TAB>gene...' "
                                     f"(>= 3 tab-separated fields), got {len(fields)} field(s)")
                name = fields[0].strip()
                if name in sets:
                    raise InputError(f"{path}:{lineno}: gene set {name!r} appears twice")
                genes = [g.strip() for g in fields[2:] if g.strip()]
                sets[name] = list(dict.fromkeys(genes))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise CorruptFileError(f"{path}: not a readable GMT file ({exc})") from exc
    return sets


def map_gene_sets(sets: Mapping[str, Iterable[str]], vocabulary: Vocabulary, *, min_genes: int = 2,
                  source: str = "gene sets") -> GeneSets:
    """Map gene symbols to token ids and drop small sets.

    Parameters
    ----------
    sets
        Set name -> gene symbols (e.g. from :func:`read_gmt`).
    vocabulary
        Genes in token order; symbols are matched against ``feature_names`` (exact, case-sensitive).
    min_genes
        Sets with fewer mapped genes are dropped (>= 2).
    source
        Named in log lines and errors.

    Returns
    -------
    GeneSets
        The kept sets in input order.
    """
    if not isinstance(min_genes, int) or isinstance(min_genes, bool) or min_genes < 2:
        raise InputError(f"map_gene_sets: min_genes must be an integer >= 2, got {min_genes!r}")
    names = np.asarray(vocabulary.feature_names, dtype=str)
    # first occurrence of each symbol: np.unique returns the first index of each value
    uniq, first = np.unique(names, return_index=True)
    lookup = dict(zip(uniq.tolist(), (first + N_SPECIAL).tolist()))
    n_ambiguous = int(names.shape[0] - uniq.shape[0])
    kept_names, kept_members = [], []
    symbols, unmapped = set(), set()
    n_dropped = 0
    for name, genes in sets.items():
        ids = []
        for g in genes:
            symbols.add(g)
            tid = lookup.get(g)
            if tid is None:
                unmapped.add(g)
            else:
                ids.append(tid)
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.shape[0] < min_genes:
            n_dropped += 1
            continue
        kept_names.append(str(name))
        kept_members.append(ids)
    logger.info("%s: %d of %d distinct symbols mapped to the vocabulary (%d unmapped; %d vocabulary symbols "
                "held by more than one gene map to the first); %d of %d sets kept (%d with < %d mapped genes dropped)",
                source, len(symbols) - len(unmapped), len(symbols), len(unmapped), n_ambiguous,
                len(kept_names), len(sets), n_dropped, min_genes)
    if unmapped:
        logger.info("%s: unmapped symbols (first 20): %s", source, sorted(unmapped)[:20])
    return GeneSets(tuple(kept_names), tuple(kept_members))


def load_gene_sets(paths: Iterable[str | os.PathLike], vocabulary: Vocabulary, *, min_genes: int = 2,
                   prefixes: Iterable[str] | None = None) -> GeneSets:
    """Read GMT files and map them to token ids (:func:`read_gmt` + :func:`map_gene_sets`).

    Parameters
    ----------
    paths
        GMT files; their sets are concatenated in order. A set name found in two files is an error.
    vocabulary
        Genes in token order.
    min_genes
        Sets with fewer mapped genes are dropped.
    prefixes
        Keep only sets whose name starts with one of these (e.g. ``("REACTOME_",)``); None keeps all.

    Returns
    -------
    GeneSets
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    prefixes = None if prefixes is None else tuple(prefixes)
    out = GeneSets((), ())
    for path in paths:
        sets = read_gmt(path)
        if prefixes is not None:
            sets = {k: v for k, v in sets.items() if k.startswith(prefixes)}
        dup = sorted(set(sets) & set(out.names))
        if dup:
            raise InputError(f"{path}: gene sets already read from an earlier file: {dup[:5]}")
        out = out.concat(map_gene_sets(sets, vocabulary, min_genes=min_genes, source=str(path)))
    if not len(out):
        raise InputError(f"no gene set with >= {min_genes} genes of the vocabulary in {[str(p) for p in paths]}")
    return out

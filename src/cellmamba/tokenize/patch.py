"""Patch tokenizer (scMamba): features in genomic order, cut into fixed-size patches.

Genomic order: natural chromosome order 1..22, X, Y, MT, then start coordinate, then Ensembl
id (tie-break); a position table with a ``gtf_rank`` column (a gene table kept in GTF order,
:func:`~cellmamba.tokenize.annotation.gene_positions_table`) orders by that rank within a
chromosome instead, so genes without a coordinate keep their annotation's order. Genes without a position (absent from the position table, or on another
contig): ``unplaced="drop"`` (default; counted in the manifest) leaves them out;
``unplaced="append"`` puts them after all placed genes, in vocabulary order. ATAC peaks
(``chr1-9776-10668`` or ``chr1:9776-10668``) are placed by their names (:func:`parse_peaks`,
:func:`peak_order`): the same chromosome order (other contigs after it, by name), then start, end.

On disk a patch shard is sparse: token = the gene's position in genomic order, value =
float32 log1p(count / total * target_sum); :func:`to_patches` / :func:`to_patches_batch`
give the dense ``(n_patches, patch_size)`` arrays (zeros elsewhere, zero padding up to a
multiple of ``patch_size``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import CorruptFileError, InputError
from . import _kernels as K
from ._common import TokenBatch, csr_chunk

__all__ = ["PatchConfig", "GenomicOrder", "CHROMOSOMES", "read_positions", "genomic_order", "parse_peaks",
           "peak_order", "tokenize_patch", "to_patches", "to_patches_batch"]

CHROMOSOMES = tuple(str(i) for i in range(1, 23)) + ("X", "Y", "MT")
UNPLACED = ("drop", "append")
_CHROM_RANK = {c: i for i, c in enumerate(CHROMOSOMES)}
_ENSEMBL_SPLIT = re.compile(r"[;,]")
_PEAK = re.compile(r"^([^:\s]+?)[:\-](\d+)-(\d+)$")


def _default_min_coverage() -> dict:
    # every protein-coding gene but a few of GENCODE's newest (20,096 of 20,120 placed on the
    # shipped tables) and every mitochondrial one: the genes a cell's patches are mostly made of
    return {"protein_coding": 0.99, "mitochondrial": 1.0}


@dataclass(frozen=True)
class PatchConfig:
    """Settings of the patch tokenizer."""

    patch_size: int = 64       # features per patch (our default; scMamba's is not restated in our sources)
    target_sum: float = 1e4    # library size of log1p(count / total * target_sum)
    unplaced: str = "drop"     # genes without a genomic position: "drop" (counted) or "append"
    # least fraction of the vocabulary's genes of each kind (gene type, or "mitochondrial") that
    # must have a position; {} checks nothing (annotation.check_coverage)
    min_coverage: dict = field(default_factory=_default_min_coverage)

    def __post_init__(self):
        if not isinstance(self.patch_size, (int, np.integer)) or self.patch_size < 1:
            raise InputError(f"PatchConfig: patch_size must be an integer >= 1, got {self.patch_size!r}")
        if not (isinstance(self.target_sum, (int, float)) and np.isfinite(self.target_sum) and self.target_sum > 0):
            raise InputError(f"PatchConfig: target_sum must be a finite number > 0, got {self.target_sum!r}")
        if self.unplaced not in UNPLACED:
            raise InputError(f"PatchConfig: unplaced must be one of {UNPLACED}, got {self.unplaced!r}")
        if not isinstance(self.min_coverage, dict):
            raise InputError(f"PatchConfig: min_coverage must map gene kinds to fractions, got {self.min_coverage!r}")
        for kind, frac in self.min_coverage.items():
            if not (isinstance(kind, str) and isinstance(frac, (int, float)) and not isinstance(frac, bool)
                    and 0 <= frac <= 1):
                raise InputError(f"PatchConfig: min_coverage[{kind!r}] must be a fraction in [0, 1], got {frac!r}")


@dataclass(frozen=True)
class GenomicOrder:
    """Vocabulary genes in genomic order.

    ``genes``: int64 (n_features,), the vocabulary gene at each position; ``position``:
    int64 (n_genes,), each gene's position, -1 = dropped; ``n_placed``: genes with a
    position; ``n_unplaced``: genes without one (dropped or appended).
    """

    genes: np.ndarray
    position: np.ndarray
    n_placed: int
    n_unplaced: int

    @property
    def n_features(self) -> int:
        return int(self.genes.shape[0])


def _strip_version(ids) -> np.ndarray:
    return np.array([s.split(".", 1)[0] for s in map(str, ids)], dtype=object)


def _chrom(name: str) -> str:
    c = str(name).strip()
    c = c[3:] if c.lower().startswith("chr") else c
    return "MT" if c in ("M", "MT", "Mt") else c


def _read_position_tsv(path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected a gene position table)") from exc
    except (UnicodeDecodeError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise CorruptFileError(f"{path}: not a readable position table ({type(exc).__name__}: {exc})") from exc


def read_positions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a gene position table (resources/genes/human_gene_positions_hg38.tsv.gz layout:
    tab-separated with columns ensembl_ids (empty, or several separated by ';' or ','),
    chromosome, start, ...), or the gene records of a GTF (``.gtf`` / ``.gtf.gz``, GENCODE or
    Ensembl; :func:`~cellmamba.tokenize.annotation.read_gtf`).

    A table with a ``gtf_rank`` column (integers: the genes' order in their annotation,
    :func:`~cellmamba.tokenize.annotation.write_gene_positions`) may leave ``start`` empty.

    Returns
    -------
    DataFrame with one row per Ensembl id (version suffix removed): ``ensembl_id``,
    ``chromosome`` (1..22, X, Y, MT), ``start`` (int64; Int64 with missing values where the
    table has ``gtf_rank``), and ``gtf_rank`` (int64) where the table has it. Rows on other
    contigs or without an id are left out; an id listed at several places keeps the first in
    genomic order (chromosome, then ``gtf_rank`` where given, else start).
    """
    if str(path).endswith((".gtf", ".gtf.gz")):
        from .annotation import read_gtf

        gtf = read_gtf(path)
        table = pd.DataFrame({"ensembl_ids": gtf["ensembl_id"], "chromosome": gtf["chromosome"],
                              "start": gtf["start"]})
    else:
        table = _read_position_tsv(path)
    missing = [c for c in ("ensembl_ids", "chromosome", "start") if c not in table]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}")
    table = table.assign(ensembl_id=table["ensembl_ids"].map(lambda s: [x.strip() for x in _ENSEMBL_SPLIT.split(s)
                                                                         if x.strip()]))
    table = table.explode("ensembl_id").dropna(subset=["ensembl_id"])
    table["chromosome"] = table["chromosome"].map(_chrom)
    table = table[table["chromosome"].isin(_CHROM_RANK)]
    ranked = "gtf_rank" in table

    def integers(col: str, *, missing_ok: bool) -> pd.Series:
        raw = table[col].astype(str).str.strip()
        val = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        bad = (val.isna() & ((raw != "") | (not missing_ok))) | (val.notna() & (val % 1 != 0))
        if bad.any():
            raise InputError(f"{path}: column {col!r} holds a non-integer value {raw[bad].iloc[0]!r}")
        return val.astype("Int64")

    start = integers("start", missing_ok=ranked)
    out = pd.DataFrame({"ensembl_id": _strip_version(table["ensembl_id"]), "chromosome": table["chromosome"].to_numpy(),
                        "start": start.array if ranked else start.astype(np.int64).to_numpy()})
    if ranked:
        out["gtf_rank"] = integers("gtf_rank", missing_ok=False).astype(np.int64).to_numpy()
    out["_rank"] = out["chromosome"].map(_CHROM_RANK)
    keys = ["_rank", "gtf_rank"] if ranked else ["_rank", "start", "ensembl_id"]
    out = out.sort_values(keys, kind="stable").drop_duplicates("ensembl_id")
    return out.drop(columns="_rank").reset_index(drop=True)


def genomic_order(feature_ids, positions: pd.DataFrame, *, unplaced: str = "drop") -> GenomicOrder:
    """Order the genes of a gene table by genomic position.

    Parameters
    ----------
    feature_ids
        (n_genes,) Ensembl ids of the vocabulary, in vocabulary order (versions ignored).
    positions
        :func:`read_positions` output (columns ensembl_id, chromosome, start).
    unplaced
        "drop" or "append" (see the module docstring).

    Returns
    -------
    :class:`GenomicOrder`. Order: chromosome (1..22, X, Y, MT), start, Ensembl id (or, where
    ``positions`` has ``gtf_rank``, chromosome then that rank); then, with "append", unplaced
    genes in vocabulary order.
    """
    if unplaced not in UNPLACED:
        raise InputError(f"genomic_order: unplaced must be one of {UNPLACED}, got {unplaced!r}")
    ids = _strip_version(feature_ids)
    pos = positions.set_index("ensembl_id")
    found = pd.Index(pos.index).get_indexer(ids)
    placed = np.flatnonzero(found >= 0)
    rank = pos["chromosome"].map(_CHROM_RANK).to_numpy()[found[placed]]
    within = pos["gtf_rank"] if "gtf_rank" in pos else pos["start"]
    start = within.to_numpy(np.int64)[found[placed]]
    order = placed[np.lexsort((ids[placed].astype(str), start, rank))]
    unplaced_genes = np.flatnonzero(found < 0)
    genes = np.concatenate([order, unplaced_genes]) if unplaced == "append" else order
    position = np.full(len(ids), -1, dtype=np.int64)
    position[genes] = np.arange(genes.shape[0])
    if genes.shape[0] == 0:
        raise InputError(f"genomic_order: none of the {len(ids)} genes (e.g. {list(ids[:3])}) has a position")
    return GenomicOrder(genes.astype(np.int64), position, int(placed.shape[0]), int(unplaced_genes.shape[0]))


def parse_peaks(names) -> pd.DataFrame:
    """Parse ATAC peak names ``chrN-start-end`` or ``chrN:start-end``.

    Parameters
    ----------
    names
        (n_peaks,) peak names.

    Returns
    -------
    DataFrame (n_peaks rows, input order): ``chromosome`` ("1".."22", "X", "Y", "MT" without
    the "chr" prefix; other contigs as written), ``start``, ``end`` (int64).

    Raises
    ------
    InputError
        When a name does not parse or has end < start (the message shows one such name).
    """
    names = [str(n) for n in names]
    chrom, start, end, bad = [], [], [], []
    for name in names:  # a regex per name: pandas' str.extract is no faster on ~10^5 short strings
        m = _PEAK.match(name.strip())
        if m is None or int(m.group(3)) < int(m.group(2)):
            bad.append(name)
            continue
        chrom.append(_chrom(m.group(1)))
        start.append(int(m.group(2)))
        end.append(int(m.group(3)))
    if bad:
        raise InputError(f"atac: {len(bad)} of {len(names)} peak names do not parse as 'chrN-start-end' or "
                         f"'chrN:start-end' (e.g. {bad[0]!r})")
    return pd.DataFrame({"chromosome": chrom, "start": np.asarray(start, np.int64), "end": np.asarray(end, np.int64)})


def peak_order(names) -> np.ndarray:
    """Positions of ``names`` in genomic order: chromosome 1..22, X, Y, MT (then other contigs,
    by name), start, end; ties keep file order. Returns int64 (n_peaks,)."""
    peaks = parse_peaks(names)
    rank = peaks["chromosome"].map(_CHROM_RANK).fillna(len(CHROMOSOMES)).to_numpy(np.int64)
    other = np.where(rank == len(CHROMOSOMES), peaks["chromosome"].to_numpy(str), "")
    # lexsort: the last key is the primary one; a stable sort keeps file order among equal peaks
    return np.lexsort((np.arange(len(peaks)), peaks["end"].to_numpy(), peaks["start"].to_numpy(), other, rank))


def tokenize_patch(X, order: GenomicOrder, config: PatchConfig = PatchConfig(), *,
                   totals: np.ndarray | None = None) -> TokenBatch:
    """Sparse patch-tokenizer form of cells.

    Parameters
    ----------
    X
        (n_cells, n_genes) scipy CSR of raw counts, columns = vocabulary genes.
    order
        :func:`genomic_order` of the vocabulary.
    config
        :class:`PatchConfig`.
    totals
        float64 (n_cells,): total counts per cell; default the row sums of ``X``.

    Returns
    -------
    TokenBatch: per cell the genomic positions (uint32, ascending) of its expressed genes
    that have one, values float32 log1p(count / total * target_sum) (computed in float64);
    ``stats["n_nonzero_unplaced"]`` counts non-zeros left out (unplaced="drop").
    """
    if order.position.shape != (X.shape[1],):
        raise InputError(f"order covers {order.position.shape[0]} genes, X has {X.shape[1]}")
    return _patch_chunk(csr_chunk(X, totals=totals), order, config)


def _patch_chunk(chunk, order: GenomicOrder, config: PatchConfig) -> TokenBatch:
    size = chunk.counts.shape[0]
    tokens = np.empty(size, dtype=np.uint32)
    values = np.empty(size, dtype=np.float32)
    lengths = np.empty(chunk.n_cells, dtype=np.int64)
    n_drop = K.patch_kernel(chunk.indptr, chunk.genes, chunk.counts, chunk.totals, order.position,
                            float(config.target_sum), tokens, values, lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = offsets[-1]
    return TokenBatch(offsets, tokens[:n], values[:n], {"n_nonzero_unplaced": int(n_drop)})


def to_patches(tokens: np.ndarray, values: np.ndarray, *, n_features: int, patch_size: int) -> np.ndarray:
    """Dense patches of one cell.

    Parameters
    ----------
    tokens
        (length,) genomic positions (a patch shard's tokens of the cell).
    values
        (length,) float32 values.
    n_features, patch_size
        From the shard manifest's settings.

    Returns
    -------
    float32 (n_patches, patch_size), n_patches = ceil(n_features / patch_size); position p
    is ``[p // patch_size, p % patch_size]``; zeros elsewhere (incl. the padding).
    """
    return to_patches_batch([(tokens, values)], n_features=n_features, patch_size=patch_size)[0]


def to_patches_batch(cells, *, n_features: int, patch_size: int) -> np.ndarray:
    """Dense patches of several cells: ``cells`` = sequence of (tokens, values) pairs (e.g.
    ``TokenizedCell`` from a shard). Returns float32 (batch, n_patches, patch_size)."""
    n_patches = -(-int(n_features) // int(patch_size))
    out = np.zeros((len(cells), n_patches * patch_size), dtype=np.float32)
    for b, (tok, val) in enumerate(cells):
        tok = np.asarray(tok)
        if tok.size and int(tok.max()) >= n_features:
            raise InputError(f"to_patches: position {int(tok.max())} >= n_features {n_features}")
        out[b, tok] = val
    return out.reshape(len(cells), n_patches, patch_size)

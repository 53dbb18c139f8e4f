"""Gene annotation for the patch tokenizer: a GENCODE / Ensembl GTF reader, the genomic order of a
gene table kept in GTF order, and placement coverage by gene kind.

- :func:`read_gtf` reads the ``gene`` records of a GTF (GENCODE ``gene_type`` or Ensembl
  ``gene_biotype``; ``chr1`` or ``1``; gzip or plain).
- :func:`order_from_gtf_ranked` places every gene of a table that lists genes in GTF order (the
  CELLxGENE curation table ``cellxgene_genes_homo_sapiens_gencode48.csv.gz`` is GENCODE 48 in its
  GTF order, but has no chromosome column): the order is GENCODE's own; each gene's chromosome
  comes from a monotone segmentation of the rows against genes of known chromosome (anchors),
  the mitochondrial block from HGNC's ``MT-`` prefix.
- :func:`gene_positions_table` / :func:`write_gene_positions`: that placement as a position table
  (:func:`~cellmamba.tokenize.patch.read_positions` reads it; ``gtf_rank`` keeps GENCODE's order).
- :func:`placement_coverage` / :func:`check_coverage`: placed / total per gene kind, and the
  error naming the kinds below a threshold; :func:`gene_kinds`: each vocabulary gene's kind.

Written by hand: gtfparse and pyranges parse every record of a GTF (about 4 M transcripts, exons
and UTRs in GENCODE, 1.6 GB unpacked) into a data frame, where we need its ~0.08 M gene lines;
streaming those lines is a few lines of code and no new dependency.
"""
from __future__ import annotations

import gzip
import logging
import os
import re

import numpy as np
import pandas as pd

from ..errors import CorruptFileError, InputError
from ..genes import read_gene_table
from ..io import atomic_path
from ..keys import VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_TYPE
from .patch import _chrom, _strip_version, read_positions

__all__ = ["read_gtf", "order_from_gtf_ranked", "gene_positions_table", "write_gene_positions", "gene_kinds",
           "placement_coverage", "check_coverage", "MITOCHONDRIAL"]

#: the kind counted for genes named with HGNC's mitochondrial prefix (MT-), whatever their type
MITOCHONDRIAL = "mitochondrial"
logger = logging.getLogger(__name__)
_NUCLEAR = tuple(str(i) for i in range(1, 23)) + ("X", "Y")
_ATTR = re.compile(r'(\S+)\s+"([^"]*)"')


def _is_mitochondrial(names) -> np.ndarray:
    """bool per gene symbol: HGNC's mitochondrial prefix MT-."""
    return pd.Series(np.asarray(names, dtype=str)).str.startswith("MT-").to_numpy()


def read_gtf(path: str | os.PathLike) -> pd.DataFrame:
    """The gene records of a GTF file.

    Returns
    -------
    DataFrame, one row per gene in file order: ``ensembl_id`` (version removed), ``symbol``
    (``gene_name``, or the id where absent), ``gene_type`` (``gene_type`` or ``gene_biotype``),
    ``chromosome`` ("1".."22", "X", "Y", "MT", or the contig's name), ``start``, ``end`` (int64,
    1-based as in the file), ``strand``.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt") as fh:
            for n, line in enumerate(fh, 1):
                if line.startswith("#") or not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) != 9:
                    raise CorruptFileError(f"{path}:{n}: a GTF line has 9 tab-separated fields, this one {len(fields)}")
                if fields[2] != "gene":
                    continue
                attrs = dict(_ATTR.findall(fields[8]))
                if "gene_id" not in attrs:
                    raise CorruptFileError(f"{path}:{n}: gene record without a gene_id attribute")
                try:
                    start, end = int(fields[3]), int(fields[4])
                except ValueError:
                    raise CorruptFileError(f"{path}:{n}: start / end {fields[3]!r} / {fields[4]!r} are not "
                                           f"integers") from None
                gene_id = attrs["gene_id"].split(".", 1)[0]
                rows.append((gene_id, attrs.get("gene_name", gene_id),
                             attrs.get("gene_type", attrs.get("gene_biotype", "")), _chrom(fields[0]), start, end,
                             fields[6]))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected a GTF gene annotation)") from exc
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise CorruptFileError(f"{path}: not a readable GTF ({type(exc).__name__}: {exc})") from exc
    if not rows:
        raise InputError(f"{path}: no 'gene' records (expected a GENCODE / Ensembl GTF with gene lines)")
    out = pd.DataFrame(rows, columns=["ensembl_id", "symbol", "gene_type", "chromosome", "start", "end", "strand"])
    return out.astype({"start": np.int64, "end": np.int64})


def _monotone_labels(codes: np.ndarray, n_labels: int) -> np.ndarray:
    """Non-decreasing labels for a sequence of codes with the fewest disagreements (dynamic
    programming over the labels: cost[k] = min_{j <= k} cost_prev[j] + [code != k])."""
    n = codes.shape[0]
    back = np.zeros((n, n_labels), dtype=np.int16)
    cost = np.zeros(n_labels)
    labels = np.arange(n_labels)
    for i in range(n):
        arg = np.zeros(n_labels, dtype=np.int16)
        run = 0
        for k in range(1, n_labels):  # running argmin of the previous costs over j <= k
            if cost[k] < cost[run]:
                run = k
            arg[k] = run
        back[i] = arg
        cost = cost[arg] + (labels != codes[i])
    out = np.empty(n, dtype=np.int64)
    k = int(np.argmin(cost))
    for i in range(n - 1, -1, -1):
        out[i] = k
        k = int(back[i, k])
    return out


def order_from_gtf_ranked(genes: pd.DataFrame, anchors: pd.DataFrame) -> pd.DataFrame:
    """Place the genes of a table kept in GTF order (nuclear chromosomes 1..22, X, Y, then the
    mitochondrial genes, then unlocalised scaffolds, as GENCODE writes them).

    Parameters
    ----------
    genes
        :func:`~cellmamba.genes.read_gene_table` output (feature_id, feature_name, feature_type),
        rows in GTF order.
    anchors
        Genes of known chromosome: columns ``ensembl_id``, ``chromosome`` (e.g.
        :func:`~cellmamba.tokenize.patch.read_positions` output).

    Returns
    -------
    DataFrame in the input's order: ``ensembl_id``, ``symbol``, ``gene_type``, ``chromosome``
    ("1".."22", "X", "Y", "MT"; "" for the scaffold genes after the mitochondrial block),
    ``gtf_rank`` (row number), ``evidence``: "anchor" (an anchor of that chromosome), "interval"
    (between anchors of one chromosome), "boundary" (between the last anchor of one chromosome
    and the first of the next: the chromosome before is written, the order is exact either way),
    "discordant" (an anchor placed elsewhere by the anchor table, e.g. an id listed on several
    chromosomes), "name" (the MT- block), "scaffold".
    """
    for col in (VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_TYPE):
        if col not in genes:
            raise InputError(f"order_from_gtf_ranked: the gene table has no {col!r} column")
    n = len(genes)
    ids = _strip_version(genes[VAR_FEATURE_ID])
    names = genes[VAR_FEATURE_NAME].astype(str).to_numpy()
    mt = np.flatnonzero(_is_mitochondrial(names))
    if mt.size == 0:
        raise InputError("order_from_gtf_ranked: no gene named MT-*: not a human gene table in GTF order")
    if mt[-1] - mt[0] + 1 != mt.size:
        raise InputError(f"order_from_gtf_ranked: the MT- genes are not one block (rows {mt[0]}..{mt[-1]} hold "
                         f"{mt.size} of them): not a table in GTF order")
    chrom = np.full(n, "", dtype=object)
    evidence = np.full(n, "scaffold", dtype=object)
    chrom[mt], evidence[mt] = "MT", "name"
    nuclear = mt[0]                               # rows before the MT block: chromosomes 1..Y
    anchor_chrom = anchors.drop_duplicates("ensembl_id").set_index("ensembl_id")["chromosome"].map(_chrom)
    code_of = {c: i for i, c in enumerate(_NUCLEAR)}
    found = anchor_chrom.reindex(ids[:nuclear]).map(code_of).to_numpy(dtype=float)
    rows = np.flatnonzero(~np.isnan(found))
    if rows.size == 0:
        raise InputError("order_from_gtf_ranked: none of the anchors is among the table's genes")
    codes = found[rows].astype(np.int64)
    labels = _monotone_labels(codes, len(_NUCLEAR))
    # every row before the MT block takes the label of the last anchor at or before it (the first
    # anchor's label before the first anchor)
    idx = np.searchsorted(rows, np.arange(nuclear), side="right") - 1
    row_label = labels[np.maximum(idx, 0)]
    chrom[:nuclear] = np.array(_NUCLEAR, dtype=object)[row_label]
    nxt = np.minimum(idx + 1, rows.size - 1)
    inside = (idx >= 0) & (idx < rows.size - 1) & (row_label == labels[nxt])
    evidence[:nuclear] = np.where(inside, "interval", "boundary")
    evidence[rows] = np.where(codes == labels, "anchor", "discordant")
    return pd.DataFrame({"ensembl_id": ids, "symbol": names, "gene_type": genes[VAR_FEATURE_TYPE].astype(str).to_numpy(),
                         "chromosome": chrom, "gtf_rank": np.arange(n, dtype=np.int64), "evidence": evidence})


def gene_positions_table(genes: pd.DataFrame, anchors: pd.DataFrame) -> pd.DataFrame:
    """:func:`order_from_gtf_ranked` as a position table: one row per gene of ``genes`` (GTF
    order): ``ensembl_ids``, ``symbol``, ``gene_type``, ``chromosome`` ("" for the scaffold
    genes: :func:`~cellmamba.tokenize.patch.read_positions` leaves them out), ``start`` (the
    anchor's coordinate for the "anchor" rows, else missing: no coordinate is made up),
    ``gtf_rank``, ``evidence``."""
    placed = order_from_gtf_ranked(genes, anchors)
    starts = anchors.drop_duplicates("ensembl_id").set_index("ensembl_id")["start"]
    start = starts.reindex(placed["ensembl_id"]).astype("Int64").reset_index(drop=True)
    start = start.where(placed["evidence"].to_numpy() == "anchor")
    return pd.DataFrame({"ensembl_ids": placed["ensembl_id"], "symbol": placed["symbol"],
                         "gene_type": placed["gene_type"], "chromosome": placed["chromosome"],
                         "start": start, "gtf_rank": placed["gtf_rank"],
                         "evidence": placed["evidence"]})


def write_gene_positions(gene_table: str | os.PathLike, anchors: str | os.PathLike,
                         out: str | os.PathLike) -> dict:
    """Write :func:`gene_positions_table` of a gene table in GTF order (a
    :func:`~cellmamba.genes.read_gene_table` CSV) against an anchor position table (a
    :func:`~cellmamba.tokenize.patch.read_positions` file) to ``out`` (tab-separated, gzip;
    written atomically). Returns the count of genes per evidence kind."""
    table = gene_positions_table(read_gene_table(gene_table), read_positions(anchors))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, compression="gzip")
    counts = {str(k): int(v) for k, v in table["evidence"].value_counts().sort_index().items()}
    logger.info("%s: the %d genes of %s in GTF order, chromosomes from the anchors of %s; genes by evidence: %s",
                out, len(table), gene_table, anchors, counts)
    return counts


def gene_kinds(feature_ids, gene_table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each vocabulary gene's kind (the gene table's ``feature_type``; "unknown" for a gene it
    lacks) and symbol ("" where it lacks the gene), by Ensembl id (versions ignored)."""
    for col in (VAR_FEATURE_ID, VAR_FEATURE_NAME, VAR_FEATURE_TYPE):
        if col not in gene_table:
            raise InputError(f"gene table: no {col!r} column (expected a read_gene_table table)")
    table = gene_table.assign(_id=_strip_version(gene_table[VAR_FEATURE_ID])).drop_duplicates("_id").set_index("_id")
    ids = _strip_version(feature_ids)
    kinds = table[VAR_FEATURE_TYPE].astype(str).reindex(ids).fillna("unknown").to_numpy(dtype=object)
    names = table[VAR_FEATURE_NAME].astype(str).reindex(ids).fillna("").to_numpy(dtype=object)
    return kinds, names


def placement_coverage(kinds: pd.Series, placed: np.ndarray, names=None) -> dict:
    """Placed / total genes per kind.

    ``kinds``: (n_genes,) each vocabulary gene's kind (gene type; "unknown" where the gene table
    has none); ``placed``: bool (n_genes,); ``names``: optional gene symbols, whose ``MT-`` genes
    are also counted under :data:`MITOCHONDRIAL`. Returns ``{kind: {"placed": int, "total": int}}``
    plus ``"all"``.
    """
    kinds = pd.Series(np.asarray(kinds, dtype=object)).fillna("unknown")
    placed = np.asarray(placed, dtype=bool)
    if placed.shape != (len(kinds),):
        raise InputError(f"placement_coverage: {placed.shape[0]} placed flags for {len(kinds)} genes")
    frame = pd.DataFrame({"kind": kinds, "placed": placed})
    if names is not None:
        mito = _is_mitochondrial(names)
        frame = pd.concat([frame, pd.DataFrame({"kind": MITOCHONDRIAL, "placed": placed[mito]})], ignore_index=True)
    out = {k: {"placed": int(g["placed"].sum()), "total": int(len(g))} for k, g in frame.groupby("kind", sort=True)}
    out["all"] = {"placed": int(placed.sum()), "total": int(placed.shape[0])}
    return out


def check_coverage(coverage: dict, min_coverage: dict, *, source: str) -> None:
    """Raise an :class:`InputError` naming every kind placed below its ``min_coverage`` fraction
    (a kind absent from the vocabulary is not checked)."""
    low = []
    for kind, need in sorted(min_coverage.items()):
        got = coverage.get(kind)
        if got is None or got["total"] == 0:
            continue
        frac = got["placed"] / got["total"]
        if frac < need:
            low.append(f"{kind} {got['placed']:,} of {got['total']:,} placed ({frac:.1%} < {need:.1%})")
    if low:
        raise InputError(f"{source}: too few genes have a genomic position: {'; '.join(low)}. Give a fuller gene "
                         f"annotation or lower the threshold of that kind")

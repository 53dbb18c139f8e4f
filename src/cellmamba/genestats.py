"""Corpus gene statistics over all QC shards (results/qc/gene_stats.tsv).

Per gene: ``n_cells_measured`` (cells whose dataset measured it), ``n_cells_detected``
(count > 0) and the EXACT non-zero median of ``count / total_counts * target_sum``.

Why hand-written: no library computes an exact median over data that does not fit in memory
(t-digest and friends are approximate, sorting needs everything at once). We use radix
selection: normalised values are positive float32, and the order of positive float32 values is
the order of their bit patterns read as uint32. Four passes over the shards, each reading them
chunk by chunk, fix 8 bits of the two middle ranks at a time with a per-gene 256-bin histogram;
memory is O(n_genes x 256) whatever the corpus size. The values are rounded to float32 once
(computed in float64), the two middle values are averaged in float64 (numpy's median of those
float32 values).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CorruptFileError, InputError
from .genes import looks_like_ensembl, map_symbols
from .io import atomic_path
from .keys import (OBS_DATASET_ID, UNS, UNS_MEASURED_DATASETS, VAR_FEATURE_ID, VAR_FEATURE_NAME,
                   VARM_MEASURED)

__all__ = ["compute_gene_stats", "gene_stats_table", "GENE_STATS_COLUMNS"]

logger = logging.getLogger(__name__)

GENE_STATS_COLUMNS = [VAR_FEATURE_ID, VAR_FEATURE_NAME, "n_cells_measured", "n_cells_detected", "nonzero_median"]
_BITS = 8
_BINS = 1 << _BITS


class _Shard:
    """One shard opened for chunked reading: its genes aligned to the vocabulary."""

    def __init__(self, path: Path, vocab: pd.DataFrame | None, *, gene_table: pd.DataFrame | None):
        import anndata as ad
        import h5py

        self.path = path
        if not path.exists():
            raise InputError(f"{path}: no such file (expected a QC shard .h5ad)")
        try:
            fh = h5py.File(path, "r")
        except OSError as exc:
            raise CorruptFileError(f"{path}: not a readable HDF5/h5ad file ({exc})") from exc
        self._fh = fh
        try:
            for key in ("X", "obs", "var"):
                if key not in fh:
                    raise CorruptFileError(f"{path}: malformed h5ad, missing group {key!r}")
            obs = ad.io.read_elem(fh["obs"])
            var = ad.io.read_elem(fh["var"])
            if OBS_DATASET_ID not in obs:
                raise InputError(f"{path}: obs has no {OBS_DATASET_ID!r} column (expected a QC shard)")
            if f"varm/{VARM_MEASURED}" not in fh:
                raise InputError(f"{path}: varm has no {VARM_MEASURED!r} mask (expected a QC shard)")
            measured = np.asarray(fh[f"varm/{VARM_MEASURED}"][()], dtype=bool)
            uns = ad.io.read_elem(fh["uns"]) if "uns" in fh else {}
            names = [str(n) for n in uns.get(UNS, {}).get(UNS_MEASURED_DATASETS, [])]
            if len(names) != measured.shape[1]:
                raise InputError(f"{path}: uns[{UNS!r}][{UNS_MEASURED_DATASETS!r}] names {len(names)} datasets, "
                                 f"varm[{VARM_MEASURED!r}] has {measured.shape[1]} columns")
            self.X = ad.io.sparse_dataset(fh["X"])
        except Exception:
            fh.close()
            raise
        self.n_cells = self.X.shape[0]
        ds = obs[OBS_DATASET_ID].astype(str).to_numpy()
        col = pd.Index(names).get_indexer(ds)
        if (col < 0).any():
            raise InputError(f"{path}: obs {OBS_DATASET_ID} value(s) {sorted(set(ds[col < 0]))[:5]} have no column "
                             f"in varm[{VARM_MEASURED!r}]")
        cells_per_dataset = np.bincount(col, minlength=len(names))
        self.var = var
        self.vocab = vocab if vocab is not None else self._own_vocab(var)
        self.gene_index = self._align(var, gene_table)  # shard gene -> vocabulary row, -1 = not in it
        known = self.gene_index >= 0
        self.n_measured = np.zeros(len(self.vocab), dtype=np.int64)
        np.add.at(self.n_measured, self.gene_index[known], measured[known].astype(np.int64) @ cells_per_dataset)

    def _own_vocab(self, var: pd.DataFrame) -> pd.DataFrame:
        ids = var[VAR_FEATURE_ID] if VAR_FEATURE_ID in var else pd.Series(var.index, index=var.index)
        names = var[VAR_FEATURE_NAME] if VAR_FEATURE_NAME in var else ids
        return pd.DataFrame({VAR_FEATURE_ID: ids.astype(str).to_numpy(), VAR_FEATURE_NAME: names.astype(str).to_numpy()})

    def _align(self, var: pd.DataFrame, gene_table: pd.DataFrame | None) -> np.ndarray:
        ids = (var[VAR_FEATURE_ID] if VAR_FEATURE_ID in var else pd.Series(var.index)).astype(str).to_numpy()
        vocab_ids = pd.Index(self.vocab[VAR_FEATURE_ID].astype(str))
        if len(ids) == len(vocab_ids) and np.array_equal(ids, vocab_ids.to_numpy()):
            return np.arange(len(ids))
        if not looks_like_ensembl(ids):
            if gene_table is None:
                raise InputError(f"{self.path}: var is keyed by gene symbols; pass gene_table= to map them")
            mapping = map_symbols(ids, gene_table, source=str(self.path))
            ids = np.where(mapping.mapped, mapping.feature_ids, "")
        index = vocab_ids.get_indexer(ids)
        n_out = int((index < 0).sum())
        if n_out:
            logger.warning("%s: %d of %d genes are not in the vocabulary and are left out of the statistics",
                           self.path, n_out, len(ids))
        if n_out == len(ids):
            raise InputError(f"{self.path}: none of its {len(ids)} genes is in the vocabulary")
        return index

    def chunks(self, chunk_cells: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (row, vocabulary gene, count) of the non-zeros, ``chunk_cells`` rows at a time,
        with each row's total counts over all its genes."""
        for start in range(0, self.n_cells, chunk_cells):
            block = self.X[start:start + chunk_cells].tocsr()
            data = np.asarray(block.data)
            if (data < 0).any() or not np.isfinite(data).all():
                raise InputError(f"{self.path}: X holds negative or non-finite values (rows {start}..); "
                                 f"raw counts are required")
            totals = np.asarray(block.sum(axis=1)).ravel()
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            genes = self.gene_index[block.indices]
            keep = (data > 0) & (genes >= 0)
            yield genes[keep], data[keep], totals[rows[keep]]

    def close(self) -> None:
        self._fh.close()


def _keys(counts: np.ndarray, totals: np.ndarray, target_sum: float) -> np.ndarray:
    """uint32 bit patterns of float32(count / total * target_sum) (order-preserving, values > 0)."""
    values = (counts.astype(np.float64) / totals * target_sum).astype(np.float32)
    return values.view(np.uint32).astype(np.uint64)


def _select(hist: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin holding 0-based ``rank`` in each row of ``hist`` (genes, bins); rank within that bin."""
    cum = np.cumsum(hist, axis=1)
    b = (cum <= rank[:, None]).sum(axis=1)
    b = np.minimum(b, hist.shape[1] - 1)  # genes with no value: any bin, masked later
    below = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0)[:, None], axis=1)[:, 0], 0)
    return b.astype(np.uint64), rank - below


def _shard_pass(path, vocab: pd.DataFrame, gene_table, target_sum: float, chunk_cells: int, p: int,
                prefix: np.ndarray | None):
    """The map of radix pass ``p`` over one shard, its genes aligned to ``vocab``: pass 0 gives
    (n_measured, the (genes, 256) histogram of the top byte); pass p > 0 the (2, genes, 256)
    histogram of byte p among the values that share each target's first p bytes (``prefix``)."""
    shard = _Shard(Path(path), vocab, gene_table=gene_table)
    try:
        n_genes = len(shard.vocab)
        if p == 0:
            hist = np.zeros((n_genes, _BINS), dtype=np.int64)
            for genes, counts, totals in shard.chunks(chunk_cells):
                keys = _keys(counts, totals, target_sum)
                np.add.at(hist, (genes, (keys >> np.uint64(32 - _BITS)).astype(np.intp)), 1)
            return shard.n_measured, hist
        shift = np.uint64(32 - _BITS * (p + 1))
        hist = np.zeros((2, n_genes, _BINS), dtype=np.int64)
        for genes, counts, totals in shard.chunks(chunk_cells):
            keys = _keys(counts, totals, target_sum)
            high = keys >> (shift + np.uint64(_BITS))
            byte = ((keys >> shift) & np.uint64(_BINS - 1)).astype(np.intp)
            for t in range(2):
                match = high == (prefix[t, genes] >> (shift + np.uint64(_BITS)))
                np.add.at(hist[t], (genes[match], byte[match]), 1)
        return hist
    finally:
        shard.close()


def _shard_pass_args(args):
    return _shard_pass(*args)


def gene_stats_table(shard_paths: Sequence[str | os.PathLike], *, target_sum: float = 1e4,
                     chunk_cells: int = 4096, vocabulary: pd.DataFrame | None = None,
                     gene_table: pd.DataFrame | None = None, workers: int = 1) -> pd.DataFrame:
    """Compute the gene statistics table (see module docstring) without writing it.

    Each of the four radix passes is a map over the shards (a histogram per shard) and a reduce
    (their sum, which fixes the next 8 bits of the two middle ranks). With ``workers`` > 1 the
    shards of a pass are read by that many processes at once; the sums are integers, so the
    table is the same whatever ``workers`` is (tested equal).

    Parameters
    ----------
    shard_paths
        QC shards (architecture.md "QC shards"), read ``chunk_cells`` rows at a time.
    target_sum
        Library size the values are normalised to.
    vocabulary
        Genes of the output, in order (columns feature_id, feature_name); default: the first
        shard's var. Shard genes outside it are counted, logged and left out.
    gene_table
        Reference table to map symbol-keyed shards to Ensembl ids (:func:`cellmamba.genes.map_symbols`).
    workers
        Processes reading the shards of a pass (the job's cores); 1: this process alone.

    Returns
    -------
    DataFrame with :data:`GENE_STATS_COLUMNS`, one row per vocabulary gene.
    """
    if not shard_paths:
        raise InputError("gene statistics: no shard given")
    if not target_sum > 0:
        raise InputError(f"gene statistics: target_sum must be > 0, got {target_sum!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"gene statistics: workers must be an integer >= 1, got {workers!r}")
    paths = [Path(p) for p in shard_paths]
    # the vocabulary: the given one, else the first shard's var (opened here, so its errors come first)
    if vocabulary is None:
        first = _Shard(paths[0], None, gene_table=gene_table)
        vocabulary = first.vocab
        first.close()
    if workers > 1 and not sys.platform.startswith("linux"):
        # forked workers only: a spawned one would re-run the main module, which under Snakemake's
        # script: is the job's script itself
        logger.info("gene statistics: worker processes need fork (Linux); reading the shards in this process")
        workers = 1
    workers = min(workers, len(paths))
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))

    def run_pass(p: int, prefix: np.ndarray | None) -> list:
        jobs = [(path, vocabulary, gene_table, target_sum, chunk_cells, p, prefix) for path in paths]
        return list(pool.map(_shard_pass_args, jobs)) if pool is not None else [_shard_pass(*job) for job in jobs]

    try:
        # pass 0: top byte of every value; its row sums are the detection counts
        first_pass = run_pass(0, None)
        n_genes = len(vocabulary)
        n_measured = sum(m for m, _ in first_pass)
        hist = sum(h for _, h in first_pass)
        logger.info("gene statistics: pass 1 of 4 over %d shards (%d process(es))", len(paths), workers)
        n_detected = hist.sum(axis=1)
        ranks = np.stack([(n_detected - 1) // 2, n_detected // 2])  # (2, genes): the two middle ranks
        ranks = np.maximum(ranks, 0)
        prefix = np.zeros((2, n_genes), dtype=np.uint64)
        for t in range(2):
            b, ranks[t] = _select(hist, ranks[t])
            prefix[t] = b << np.uint64(32 - _BITS)

        # passes 1-3: the next byte among the values sharing each target's prefix
        for p in range(1, 32 // _BITS):
            shift = np.uint64(32 - _BITS * (p + 1))
            hist = sum(run_pass(p, prefix))
            logger.info("gene statistics: pass %d of 4 done", p + 1)
            for t in range(2):
                b, ranks[t] = _select(hist[t], ranks[t])
                prefix[t] |= b << shift
    finally:
        if pool is not None:
            pool.shutdown()

    middle = prefix.astype(np.uint32).view(np.float32).astype(np.float64)
    median = np.where(n_detected > 0, (middle[0] + middle[1]) / 2, np.nan)
    stats = pd.DataFrame({VAR_FEATURE_ID: vocabulary[VAR_FEATURE_ID].astype(str).to_numpy(),
                          VAR_FEATURE_NAME: vocabulary[VAR_FEATURE_NAME].astype(str).to_numpy(),
                          "n_cells_measured": n_measured, "n_cells_detected": n_detected,
                          "nonzero_median": median})
    bad = stats["n_cells_detected"] > stats["n_cells_measured"]
    if bad.any():
        logger.warning("%d gene(s) detected in more cells than measured them (varm measured incomplete), e.g. %s",
                       int(bad.sum()), stats.loc[bad, VAR_FEATURE_ID].head(5).tolist())
    return stats


def compute_gene_stats(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                       target_sum: float = 1e4, chunk_cells: int = 4096,
                       vocabulary: pd.DataFrame | None = None, gene_table: pd.DataFrame | None = None,
                       workers: int = 1) -> Path:
    """Compute gene statistics over all QC shards and write ``out_path`` (TSV, atomically).

    Columns: feature_id, feature_name, n_cells_measured, n_cells_detected, nonzero_median
    (NaN where never detected); one row per vocabulary gene in order. Memory: O(n_genes x 256)
    plus one chunk per worker, independent of the number of cells. See :func:`gene_stats_table`.
    """
    stats = gene_stats_table(shard_paths, target_sum=target_sum, chunk_cells=chunk_cells,
                             vocabulary=vocabulary, gene_table=gene_table, workers=workers)
    with atomic_path(out_path) as tmp:
        stats.to_csv(tmp, sep="\t", index=False, na_rep="NaN")
    logger.info("gene statistics of %d shards -> %s: %d genes, %d detected at least once",
                len(shard_paths), out_path, len(stats), int((stats["n_cells_detected"] > 0).sum()))
    return Path(out_path)

"""QC shard (h5ad) in -> token shard out, in bounded-memory chunks of cells."""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CorruptFileError, InputError
from ..genes import read_gene_table
from ..io import atomic_path
from ..keys import OBS_DATASET_ID, UNS, UNS_MEASURED_DATASETS, VAR_FEATURE_ID, VARM_MEASURED
from ..vocab import vocab_hash
from . import _kernels as K
from ._common import CsrChunk, check_counts
from .annotation import check_coverage, gene_kinds, placement_coverage
from .binned import BinnedConfig, _binned_chunk
from .patch import PatchConfig, _patch_chunk, genomic_order, read_positions
from .rank import RankConfig, _rank_chunk, gene_medians, read_gene_stats
from .shards import ShardWriter

__all__ = ["tokenize_h5ad", "TOKENIZERS"]

logger = logging.getLogger(__name__)

TOKENIZERS = {"rank": RankConfig, "binned": BinnedConfig, "patch": PatchConfig}


class _QcShard:
    """A QC shard opened with h5py: checked metadata, X read by row chunks."""

    def __init__(self, path: Path):
        import anndata as ad
        import h5py

        self.path = path
        if not path.exists():
            raise InputError(f"{path}: no such file (expected a QC shard .h5ad)")
        try:
            self.fh = h5py.File(path, "r")
        except OSError as exc:
            raise CorruptFileError(f"{path}: not a readable HDF5/h5ad file ({exc})") from exc
        try:
            fh = self.fh
            for key in ("X", "obs", "var"):
                if key not in fh:
                    raise CorruptFileError(f"{path}: malformed h5ad, missing group {key!r}")
            X = fh["X"]
            enc = X.attrs.get("encoding-type", "") if isinstance(X, h5py.Group) else "dense array"
            if enc != "csr_matrix":
                raise InputError(f"{path}: X is {enc or 'of unknown encoding'}; expected a CSR matrix of raw counts")
            self.n_cells, self.n_file_genes = (int(v) for v in X.attrs["shape"])
            self.indptr, self.indices, self.data = X["indptr"], X["indices"], X["data"]
            if OBS_DATASET_ID not in fh["obs"]:
                raise InputError(f"{path}: obs has no {OBS_DATASET_ID!r} column (expected a QC shard)")
            self.dataset_ids = np.asarray(ad.io.read_elem(fh["obs"][OBS_DATASET_ID])).astype(str)
            var = ad.io.read_elem(fh["var"])
            self.feature_ids = (var[VAR_FEATURE_ID] if VAR_FEATURE_ID in var else var.index).astype(str).to_numpy()
            if pd.Index(self.feature_ids).has_duplicates:
                dup = pd.Index(self.feature_ids)[pd.Index(self.feature_ids).duplicated()][:5].tolist()
                raise InputError(f"{path}: var has duplicated feature ids {dup}")
            if f"varm/{VARM_MEASURED}" not in fh:
                raise InputError(f"{path}: varm has no {VARM_MEASURED!r} mask (expected a QC shard)")
            self.measured = np.asarray(fh[f"varm/{VARM_MEASURED}"][()], dtype=bool)
            key = f"uns/{UNS}/{UNS_MEASURED_DATASETS}"
            if key not in fh:
                raise InputError(f"{path}: no {key!r} (names of the varm[{VARM_MEASURED!r}] columns)")
            self.datasets = [str(x) for x in ad.io.read_elem(fh[key])]
        except Exception:
            self.fh.close()
            raise
        if self.measured.shape != (self.n_file_genes, len(self.datasets)):
            raise InputError(f"{path}: varm[{VARM_MEASURED!r}] has shape {self.measured.shape}, expected "
                             f"({self.n_file_genes}, {len(self.datasets)}) (genes x {key})")
        self.dataset_index = pd.Index(self.datasets).get_indexer(self.dataset_ids)
        if (self.dataset_index < 0).any():
            bad = sorted(set(self.dataset_ids[self.dataset_index < 0]))[:5]
            raise InputError(f"{path}: obs {OBS_DATASET_ID!r} value(s) {bad} are not in {key}")

    def chunks(self, chunk_cells: int, gene_map: np.ndarray | None):
        """Yield (first row, CsrChunk) over the rows, ``chunk_cells`` at a time."""
        for start in range(0, self.n_cells, chunk_cells):
            stop = min(start + chunk_cells, self.n_cells)
            ip = np.asarray(self.indptr[start:stop + 1], dtype=np.int64)
            a, b = int(ip[0]), int(ip[-1])
            ip -= a
            idx = self.indices[a:b]
            data = self.data[a:b]
            if data.dtype != np.float32:
                f32 = data.astype(np.float32)
                if not np.array_equal(f32, data):
                    bad = int(np.flatnonzero(f32 != data)[0])
                    raise InputError(f"{self.path}: X holds {data[bad]!r} (not exact in float32); raw counts required")
                data = f32
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n_file_genes):
                raise CorruptFileError(f"{self.path}: X/indices out of range 0..{self.n_file_genes - 1} (rows {start}..)")
            totals = np.empty(stop - start, dtype=np.float64)
            bad, ascending = K.scan_chunk(ip, idx, data, totals)  # one pass: validation, totals, order
            if bad >= 0:
                check_counts(data, ip, idx, source=str(self.path), first_row=start, gene_names=self.feature_ids)
            genes = idx
            if gene_map is not None:
                genes = gene_map[idx]
                ascending = K.rows_ascending(ip, genes)
            if not ascending:  # unsorted rows, or a gene map that reorders
                rows = np.repeat(np.arange(stop - start), np.diff(ip))
                order = np.lexsort((genes, rows))
                genes, data = genes[order], data[order]
            yield start, CsrChunk(ip, genes, data, totals)

    def close(self) -> None:
        self.fh.close()


def _resolve_config(tokenizer: str, config):
    if tokenizer not in TOKENIZERS:
        raise InputError(f"tokenizer must be one of {sorted(TOKENIZERS)}, got {tokenizer!r}")
    cls = TOKENIZERS[tokenizer]
    if config is None:
        return cls()
    if isinstance(config, dict):
        return cls(**config)
    if not isinstance(config, cls):
        raise InputError(f"tokenizer {tokenizer!r} takes a {cls.__name__}, got {type(config).__name__}")
    return config


def tokenize_h5ad(in_path: str | os.PathLike, out_dir: str | os.PathLike, *, tokenizer: str,
                  config=None, gene_stats=None, positions=None, gene_table=None, vocabulary=None,
                  chunk_cells: int = 4096) -> dict:
    """Tokenize a QC shard into a token shard directory (docs/architecture.md formats).

    Parameters
    ----------
    in_path
        QC shard .h5ad: X CSR raw counts (n_cells, n_genes), obs ``dataset_id``, var indexed
        by Ensembl id, varm ``measured`` + uns ``cellmamba/measured_datasets``.
    out_dir
        The shard directory, written atomically (a temporary sibling renamed on success;
        nothing is left behind on error).
    tokenizer
        "rank", "binned" or "patch".
    config
        :class:`RankConfig` / :class:`BinnedConfig` / :class:`PatchConfig` (or a dict of its
        fields); default settings if None.
    gene_stats
        rank only (required): gene_stats.tsv path or its DataFrame. Its feature_id order is
        the vocabulary.
    positions
        patch only (required): gene position table path or :func:`read_positions` DataFrame.
    gene_table
        patch only: the vocabulary's gene table (path or :func:`~cellmamba.genes.read_gene_table`
        DataFrame), whose ``feature_type`` / ``feature_name`` give each gene's kind for the
        placement coverage (manifest ``placement``) and its check against
        ``PatchConfig.min_coverage``; required unless ``min_coverage`` is empty.
    vocabulary
        Ensembl ids in token order; default the gene_stats ids (rank) or the file's var.
        File genes outside it are left out and counted (``stats.n_genes_not_in_vocab``);
        none inside is an error.
    chunk_cells
        Cells read and tokenized at a time: memory is O(chunk_cells x non-zeros per cell).

    Returns
    -------
    The shard manifest (also written to ``out_dir/manifest.json``).
    """
    t0 = time.perf_counter()
    in_path, out_dir = Path(in_path), Path(out_dir)
    config = _resolve_config(tokenizer, config)
    if not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise InputError(f"chunk_cells must be an integer >= 1, got {chunk_cells!r}")
    medians = order = None
    if tokenizer == "rank":
        if gene_stats is None:
            raise InputError("tokenizer 'rank' needs gene_stats= (gene_stats.tsv: per-gene non-zero medians)")
        stats = gene_stats if isinstance(gene_stats, pd.DataFrame) else read_gene_stats(gene_stats)
        stats_source = stats.attrs.get("source", "gene_stats")
        stats_ids, medians = gene_medians(stats, source=stats_source)
        if vocabulary is not None and not np.array_equal(np.asarray(vocabulary, dtype=str), stats_ids):
            raise InputError(f"{stats_source}: its feature_id list differs from the vocabulary given "
                             f"(vocab_hash {vocab_hash(stats_ids)[:12]} vs {vocab_hash(vocabulary)[:12]})")
        vocabulary = stats_ids
    elif tokenizer == "patch" and positions is None:
        raise InputError("tokenizer 'patch' needs positions= (a gene position table, e.g. "
                         "resources/genes/human_gene_positions_hg38.tsv.gz)")
    elif tokenizer == "patch" and gene_table is None and config.min_coverage:
        raise InputError(f"tokenizer 'patch' checks the placement of each gene kind (min_coverage "
                         f"{config.min_coverage}): give gene_table= (the vocabulary's gene table, e.g. "
                         f"resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz), or min_coverage={{}}")

    shard = _QcShard(in_path)
    try:
        if shard.n_cells == 0:
            raise InputError(f"{in_path}: has 0 cells; an empty shard is not tokenized (check the QC "
                             f"thresholds or the census plan that produced it)")
        vocab_ids = shard.feature_ids if vocabulary is None else np.asarray(vocabulary, dtype=str)
        vocab_source = "the vocabulary" if tokenizer != "rank" else str(stats_source)
        gene_map = None
        if not np.array_equal(vocab_ids, shard.feature_ids):
            gene_map = pd.Index(vocab_ids).get_indexer(shard.feature_ids).astype(np.int64)
        n_out = 0 if gene_map is None else int((gene_map < 0).sum())
        if n_out == shard.n_file_genes:
            raise InputError(f"{in_path}: none of its {shard.n_file_genes} var genes (e.g. "
                             f"{list(shard.feature_ids[:3])}) is in {vocab_source} (e.g. {list(vocab_ids[:3])})")
        if n_out:
            logger.warning("%s: %d of %d var genes are not in %s and are left out", in_path, n_out,
                           shard.n_file_genes, vocab_source)
        n_genes = len(vocab_ids)
        measured = np.zeros((len(shard.datasets), n_genes), dtype=bool)
        if gene_map is None:
            measured[:] = shard.measured.T
        else:
            ok = gene_map >= 0
            measured[:, gene_map[ok]] = shard.measured[ok].T

        settings = dataclasses.asdict(config)
        stats_total: dict[str, int] = {"n_genes_not_in_vocab": n_out}
        extra = {}
        if tokenizer == "rank":
            stats_total["n_genes_no_median"] = int(np.isnan(medians).sum())
        if tokenizer == "patch":
            pos_table = positions if isinstance(positions, pd.DataFrame) else read_positions(positions)
            order = genomic_order(vocab_ids, pos_table, unplaced=config.unplaced)
            placed = np.zeros(n_genes, dtype=bool)
            placed[order.genes[:order.n_placed]] = True
            if gene_table is not None:
                table = gene_table if isinstance(gene_table, pd.DataFrame) else read_gene_table(gene_table)
                kinds, names = gene_kinds(vocab_ids, table)
            else:
                kinds, names = np.full(n_genes, "unknown", dtype=object), None
            coverage = placement_coverage(kinds, placed, names)
            pos_source = "the position table given" if isinstance(positions, pd.DataFrame) else str(positions)
            check_coverage(coverage, config.min_coverage, source=pos_source)
            n_patches = -(-order.n_features // config.patch_size)
            settings.update(n_features=order.n_features, n_patches=n_patches)
            stats_total.update(n_genes_placed=order.n_placed, n_genes_unplaced=order.n_unplaced)
            extra["features"] = order.genes
        values_dtype = {"rank": None, "binned": np.uint8, "patch": np.float32}[tokenizer]

        with atomic_path(out_dir) as tmp:
            writer = ShardWriter(tmp, values_dtype=values_dtype)
            for start, chunk in shard.chunks(int(chunk_cells), gene_map):
                if tokenizer == "rank":
                    batch = _rank_chunk(chunk, medians, config)
                elif tokenizer == "binned":
                    batch = _binned_chunk(chunk, config, start)
                else:
                    batch = _patch_chunk(chunk, order, config)
                writer.append(np.diff(batch.offsets), batch.tokens, batch.values)
                for k, v in batch.stats.items():
                    stats_total[k] = stats_total.get(k, 0) + v
            manifest = writer.finish(
                dataset=shard.dataset_index.astype(np.int32), measured=measured, extra_arrays=extra,
                manifest={"tokenizer": tokenizer, "settings": settings, "stats": stats_total,
                          **({"placement": coverage} if tokenizer == "patch" else {}),
                          "vocab_hash": vocab_hash(vocab_ids), "n_genes": n_genes, "datasets": shard.datasets,
                          "source": str(in_path)})
    finally:
        shard.close()
    dt = time.perf_counter() - t0
    logger.info("%s -> %s (%s): %d cells, %d tokens, %.1f s (%.0f cells/s)", in_path, out_dir, tokenizer,
                manifest["n_cells"], manifest["n_tokens"], dt, manifest["n_cells"] / max(dt, 1e-9))
    return manifest

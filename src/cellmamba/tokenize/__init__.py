"""Tokenizers (rank / binned / patch) and memory-mapped token shards.

- ``rank`` (GeneMamba): :func:`tokenize_rank`, :class:`RankConfig`.
- ``binned`` (SC-MAMBA2 / scGPT): :func:`tokenize_binned`, :class:`BinnedConfig`.
- ``patch`` (scMamba): :func:`tokenize_patch`, :class:`PatchConfig`, :func:`genomic_order`,
  :func:`to_patches`, :func:`parse_peaks` / :func:`peak_order` (ATAC peaks in genomic order).
- Files: :func:`tokenize_h5ad` (QC shard -> token shard), :class:`TokenShard`,
  :class:`TokenCorpus`, :func:`write_corpus_manifest`, :func:`verify_shard`,
  :class:`ShardVerifier` (the full check in the background).
"""
from ._common import TokenBatch
from .binned import BinnedConfig, tokenize_binned
from .patch import (CHROMOSOMES, GenomicOrder, PatchConfig, genomic_order, parse_peaks, peak_order, read_positions,
                    to_patches, to_patches_batch, tokenize_patch)
from .pipeline import TOKENIZERS, tokenize_h5ad
from .rank import RankConfig, gene_medians, read_gene_stats, tokenize_rank
from .shards import (ShardVerifier, ShardWriter, TokenCorpus, TokenizedCell, TokenShard, verify_shard,
                     write_corpus_manifest)

__all__ = [
    "RankConfig", "BinnedConfig", "PatchConfig", "TOKENIZERS",
    "tokenize_rank", "tokenize_binned", "tokenize_patch", "TokenBatch",
    "read_gene_stats", "gene_medians", "read_positions", "genomic_order", "GenomicOrder", "CHROMOSOMES",
    "parse_peaks", "peak_order",
    "to_patches", "to_patches_batch",
    "tokenize_h5ad", "TokenShard", "TokenCorpus", "TokenizedCell", "ShardWriter",
    "write_corpus_manifest", "verify_shard", "ShardVerifier",
]

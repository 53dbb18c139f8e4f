"""Rule tokenize: one QC shard -> one token shard directory (rank, binned or patch)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tokenize import tokenize_h5ad

settings = dict(snakemake.params.settings)
chunk_cells = settings.pop("chunk_cells")
tokenize_h5ad(
    snakemake.input.shard,
    snakemake.output.shard,
    tokenizer=snakemake.wildcards.tokenizer,
    config=settings,
    gene_stats=snakemake.input.get("gene_stats"),
    positions=snakemake.input.get("positions"),
    gene_table=snakemake.input.get("gene_table"),
    chunk_cells=chunk_cells,
)

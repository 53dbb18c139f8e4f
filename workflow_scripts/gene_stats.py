"""Rule gene_stats: exact per-gene non-zero medians and detection counts over all QC shards."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.genestats import compute_gene_stats

compute_gene_stats(list(snakemake.input.shards), snakemake.output.stats, target_sum=snakemake.params.target_sum)

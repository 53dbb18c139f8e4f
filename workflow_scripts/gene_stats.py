"""Rule gene_stats: exact per-gene non-zero medians and detection counts over all QC shards."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.genestats import compute_gene_stats

# the job's cores (the profile's cpus_per_task, else the rule's threads) read the shards of each pass
cores = int(snakemake.resources.get("cpus_per_task") or snakemake.threads)
compute_gene_stats(list(snakemake.input.shards), snakemake.output.stats, target_sum=snakemake.params.target_sum,
                   workers=max(1, cores))

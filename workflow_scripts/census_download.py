"""Rule census_download: stream one shard's raw counts into results/census/shards/{shard}.h5ad."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.census import CensusConfig, download_shard

download_shard(
    CensusConfig.from_workflow(**snakemake.params.census),
    snakemake.input.plan,
    int(snakemake.wildcards.shard),
    snakemake.output.shard,
)

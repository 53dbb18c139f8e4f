"""Rule census_download: stream one shard's raw counts into results/census/shards/{shard}.h5ad."""
from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.census import CensusConfig, download_shard

download_shard(
    CensusConfig(**snakemake.params.census),
    snakemake.input.plan,
    int(snakemake.wildcards.shard),
    snakemake.output.shard,
)

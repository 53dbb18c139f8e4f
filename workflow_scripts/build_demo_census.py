"""Rule build_demo_census: a local Census-shaped SOMA store from the real data in resources/demo."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.census_store import build_demo_census

build_demo_census(
    snakemake.input.celltypist,
    snakemake.input.kang,
    snakemake.output.store,
    gene_table=snakemake.input.gene_table,
    id2name=snakemake.input.id2name,
    census_version=snakemake.params.census_version,
)

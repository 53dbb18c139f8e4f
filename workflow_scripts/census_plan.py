"""Rule census_plan: filter census obs, apply exclusions, assign cells to the static shards."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.census import CensusConfig, plan_census

plan_census(CensusConfig.from_workflow(**snakemake.params.census), snakemake.output.plan)

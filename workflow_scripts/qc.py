"""Rule qc: cell QC of one shard; raw counts and size factors kept, no HVG selection."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.qc import QCConfig, qc_shard

qc_shard(snakemake.input.shard, snakemake.output.shard, config=QCConfig(**snakemake.params.qc))

"""Rule plot_scalability: the multi-omics methods' wall time / peak memory vs cells.

input: csv (benchmarks/results/scalability.csv); output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import scalability

rows = scalability(snakemake.input.csv, snakemake.output.png)
log.info("%d scalability points (%s) -> %s", len(rows), ", ".join(dict.fromkeys(rows["device"])), snakemake.output.png)

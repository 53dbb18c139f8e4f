"""Rule plot_trajectory: each method's diffusion pseudotime against the published pseudotime of one dataset.

input.per_cell: rule score_trajectory's per_cell.csv; params: title, simulated; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import trajectory_scatter

summary = trajectory_scatter(snakemake.input.per_cell, snakemake.output.png, title=snakemake.params.title,
                             simulated=snakemake.params.simulated)
log.info("%d methods -> %s\n%s", len(summary), snakemake.output.png, summary.to_string(index=False))

"""Rule plot_rank_reconstruction: input vs reconstructed rank density, one panel per model.

input: densities, metrics (one per model, in params.methods order); output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots.genes import rank_density

methods = list(snakemake.params.methods)
data = rank_density(dict(zip(methods, snakemake.input.densities)), snakemake.output.png,
                    metrics=dict(zip(methods, snakemake.input.metrics)))
log.info("%d panels -> %s", len(data), snakemake.output.png)

"""Rule plot_perturbation_scatter: predicted vs measured change from the control mean.

input: deltas (one h5ad per method, written by score_perturbation);
params: n_conditions; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import perturbation_scatter

data = perturbation_scatter(list(snakemake.input.deltas), snakemake.output.png,
                            n_conditions=snakemake.params.n_conditions)
log.info("conditions %s x %d methods -> %s", list(data["condition"].unique()), data["method"].nunique(),
         snakemake.output.png)

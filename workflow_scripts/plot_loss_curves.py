"""Rule plot_loss_curves: pretraining loss vs step of every pretrained model.

input.metrics: results/pretrain/<model>/metrics.csv files; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import loss_curves

data = loss_curves(list(snakemake.input.metrics), snakemake.output.png)
log.info("models %s -> %s", list(data["model"].unique()), snakemake.output.png)

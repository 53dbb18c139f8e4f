"""Rule plot_confusion: row-normalised confusion matrices of one annotation dataset.

input.confusion: one confusion.csv per method; params: title, simulated; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import confusion_heatmaps

data = confusion_heatmaps(list(snakemake.input.confusion), snakemake.output.png, title=snakemake.params.title,
                          simulated=snakemake.params.simulated)
log.info("%d methods, %d classes -> %s", data["method"].nunique(), data["true"].nunique(), snakemake.output.png)

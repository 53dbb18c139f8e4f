"""Rule plot_metric_bars: bar chart of one task's headline metrics over every run.

input: the task's per-run metrics.csv files; params: task; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import metric_bars

data = metric_bars(list(snakemake.input), snakemake.output.png, task=snakemake.params.task)
log.info("%s: %d bars (%d methods) -> %s", snakemake.params.task, len(data), data["method"].nunique(),
         snakemake.output.png)

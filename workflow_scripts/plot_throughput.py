"""Rule plot_throughput: GPU throughput / memory vs context length, and per task.

input: throughput, tasks (benchmarks/results CSVs); output: throughput_png/pdf, tasks_png/pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import task_throughput, throughput

rows = throughput(snakemake.input.throughput, snakemake.output.throughput_png)
log.info("%d throughput points -> %s", len(rows), snakemake.output.throughput_png)
rows = task_throughput(snakemake.input.tasks, snakemake.output.tasks_png)
log.info("%d task bars -> %s", len(rows), snakemake.output.tasks_png)

"""Rule *_table: per-run metric CSVs of one task -> method x dataset x metric, mean ± std over seeds.

input: the runs' long metric CSVs; params: task, title, also (other tasks' rows allowed); output.csv (tidy), output.md (Markdown).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.errors import InputError
from cellmamba.metrics import read_metrics, summarize, write_table

task = snakemake.params.task
allowed = {task, *snakemake.params.get("also", [])}   # e.g. reverse_perturbation rows in the perturbation table
frames = read_metrics(list(snakemake.input))
other = sorted({t for f in frames for t in f["task"].unique()} - allowed)
if other:
    raise InputError(f"{task} table: inputs hold rows of other tasks {other}")
summary = summarize(frames)
log.info("%s table: %d runs -> %d rows", task, len(frames), len(summary))
write_table(summary, snakemake.output.csv, snakemake.output.md, title=snakemake.params.title)

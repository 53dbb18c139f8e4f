"""Rule table_report: a benchmark table's Markdown as an HTML page for the workflow report.

input.md: results/tables/<task>.md; output.html.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.report import table_html

text = table_html(snakemake.input.md, snakemake.output.html)
log.info("%s -> %s (%d characters)", snakemake.input.md, snakemake.output.html, len(text))

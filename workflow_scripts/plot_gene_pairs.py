"""Rule plot_gene_pairs: AUROC / AUPRC bars of the gene-pair table.

input.table: results/tables/gene_pairs.csv; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots.genes import gene_pair_bars

data = gene_pair_bars(snakemake.input.table, snakemake.output.png)
log.info("%d bars -> %s", len(data), snakemake.output.png)

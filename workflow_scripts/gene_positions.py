"""Rule gene_positions: GENCODE 48's gene order as a position table (tokenize.patch.annotation: gencode48)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tokenize.annotation import write_gene_positions

write_gene_positions(snakemake.input.gene_table, snakemake.input.anchors, snakemake.output.positions)

"""Rule gene_pair_references: the references of the gene-pair table on the same pairs: co-expression
(Pearson r in a sample of the pretraining corpus' QC shards) and a seeded random score.

input: pairs, shards (results/qc/*.h5ad); params: settings; output.metrics (long metric rows).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.metrics import write_csv
from cellmamba.gene_analyses import GeneAnalysisConfig, pair_reference_rows

rows = pair_reference_rows(snakemake.input.pairs, list(snakemake.input.shards),
                           config=GeneAnalysisConfig.from_dict(snakemake.params.settings))
write_csv(rows, snakemake.output.metrics)

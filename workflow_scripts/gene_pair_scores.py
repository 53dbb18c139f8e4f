"""Rule gene_pair_scores: AUROC / AUPRC of one model's gene embeddings (input table rows and
contextual states) on the pair set.

input: model, dataset, pairs; params: method, init (pretrained / scratch), pretrain_seed, settings;
output.metrics (long metric rows).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.metrics import write_csv
from cellmamba.gene_analyses import GeneAnalysisConfig, gene_pair_rows

rows = gene_pair_rows(snakemake.input.model, snakemake.input.dataset, snakemake.input.pairs,
                      method=snakemake.params.method, init=snakemake.params.init,
                      pretrain_seed=snakemake.params.pretrain_seed,
                      config=GeneAnalysisConfig.from_dict(snakemake.params.settings))
write_csv(rows, snakemake.output.metrics)

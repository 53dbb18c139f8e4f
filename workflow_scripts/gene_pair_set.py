"""Rule gene_pair_set: the gene pairs every model and reference of the gene-pair table is scored on.

input: model (a model directory: vocabulary, tokenizer), dataset (held-out cells), held_out (GMT
files of the labels), trained (GMT files of the pathway loss, may be empty); params: settings
(config genes, less its workflow keys); output.pairs (TSV, gzip).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.gene_analyses import GeneAnalysisConfig, build_pair_set

build_pair_set(snakemake.input.model, snakemake.input.dataset, snakemake.output.pairs,
               held_out=list(snakemake.input.held_out), trained=list(snakemake.input.trained),
               config=GeneAnalysisConfig.from_dict(snakemake.params.settings))

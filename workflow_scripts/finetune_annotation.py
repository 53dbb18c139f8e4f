"""Rule finetune_annotation: a pretrained model fine-tuned as a classifier on the reference split."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tasks import FinetuneConfig
from cellmamba.tasks.run import finetune_annotation_files

finetune_annotation_files(snakemake.input.dataset, snakemake.input.model, snakemake.input.vocabulary,
                          config=FinetuneConfig.from_dict(snakemake.params.settings),
                          predictions=snakemake.output.predictions, train_dir=snakemake.output.train,
                          genes=snakemake.params.genes, gene_overlap=snakemake.params.gene_overlap,
                          aliases=snakemake.input.aliases)

"""Rule finetune_integration: masked-objective + adversarial fine-tuning, embeddings of all cells."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tasks import FinetuneConfig
from cellmamba.tasks.run import finetune_integration_files

finetune_integration_files(snakemake.input.dataset, snakemake.input.model, snakemake.input.vocabulary,
                           config=FinetuneConfig.from_dict(snakemake.params.settings),
                           embedding=snakemake.output.embedding, train_dir=snakemake.output.train,
                           genes=snakemake.params.genes, gene_overlap=snakemake.params.gene_overlap,
                           aliases=snakemake.input.aliases)

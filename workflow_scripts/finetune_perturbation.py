"""Rule finetune_perturbation: control cell in, perturbed cell out; predicted mean profiles of the
split's test conditions and reverse-perturbation candidates (profiles h5ad) + train dir."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tasks.perturb import PerturbConfig
from cellmamba.tasks.run import finetune_perturbation_files

finetune_perturbation_files(snakemake.input.dataset, snakemake.input.model, snakemake.input.vocabulary,
                            split=snakemake.input.split, config=PerturbConfig.from_dict(snakemake.params.settings),
                            predictions=snakemake.output.predictions, train_dir=snakemake.output.train,
                            gene_overlap=snakemake.params.gene_overlap,
                            aliases=snakemake.input.aliases)

"""Rule baseline_perturbation: no_change, train_mean or additive predictions of the split's test
conditions and reverse-perturbation candidates (profiles h5ad, the models' format)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.baselines import run_perturbation_baseline

run_perturbation_baseline(snakemake.input.dataset, snakemake.input.split, snakemake.output.predictions,
                          method=snakemake.params.method, seed=int(snakemake.params.seed))

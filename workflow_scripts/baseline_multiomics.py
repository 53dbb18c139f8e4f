"""Rule baseline_multiomics: PCA + CCA or MultiVI (paired-embedding h5ad, the models' format), or
totalVI (a joint-latent h5ad) of the paired cells."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.baselines import run_multiomics_baseline_files

run_multiomics_baseline_files(snakemake.input.dataset, snakemake.output.embedding, method=snakemake.params.method,
                              seed=int(snakemake.params.seed), settings=dict(snakemake.params.settings))

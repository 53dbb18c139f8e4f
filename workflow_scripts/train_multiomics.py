"""Rule train_multiomics: scmamba two-tower contrastive training on the paired cells; both
modalities' embeddings of every cell (paired-embedding h5ad) + train dir."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tasks.multiomics import MultiomicsConfig
from cellmamba.tasks.run import train_multiomics_files

train_multiomics_files(snakemake.input.dataset, snakemake.input.positions,
                       config=MultiomicsConfig.from_dict(snakemake.params.settings),
                       embedding=snakemake.output.embedding, train_dir=snakemake.output.train,
                       method=snakemake.wildcards.method)

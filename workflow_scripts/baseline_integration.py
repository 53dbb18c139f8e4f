"""Rule baseline_integration: an embedding of every cell by pca, harmony or scvi, on the genes the
models use (params.genes); h5ad with the dataset's obs, obsm["X_emb"], X empty,
uns["cellmamba"] {method, seed, settings, genes}."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.baselines import run_integration_baseline

run_integration_baseline(snakemake.input.dataset, snakemake.output.embedding, method=snakemake.params.method,
                         seed=int(snakemake.params.seed), settings=dict(snakemake.params.settings or {}),
                         genes=snakemake.params.get("genes"))

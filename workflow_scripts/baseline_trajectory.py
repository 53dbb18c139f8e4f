"""Rule baseline_trajectory: PCA of the log-normalised expression of every cell of a trajectory dataset.

input.dataset: standard-schema h5ad; params: method (pca), seed, modality (var modality kept, or None),
settings (n_hvg, n_comps); output.embedding: h5ad with obsm["X_emb"] and uns["cellmamba"] {method, seed, settings}.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.baselines import run_trajectory_baseline

run_trajectory_baseline(snakemake.input.dataset, snakemake.output.embedding, method=snakemake.params.method,
                        seed=int(snakemake.params.seed), settings=dict(snakemake.params.settings or {}),
                        modality=snakemake.params.modality)

"""Rule baseline_annotation: a simple classifier (logreg or knn_pca) trained on the reference
cells predicts the query cells; CSV with cell, split, cell_type, predicted."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.baselines import run_annotation_baseline

run_annotation_baseline(snakemake.input.dataset, snakemake.output.predictions, method=snakemake.params.method,
                        seed=int(snakemake.params.seed), settings=dict(snakemake.params.settings or {}))

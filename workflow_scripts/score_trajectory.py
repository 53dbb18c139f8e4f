"""Rule score_trajectory: scib's trajectory conservation and the DPT Spearman correlations of every
embedding of one trajectory dataset.

input.dataset: the prepared dataset (obs: the reference's columns); input.embeddings: h5ad files with
obsm["X_emb"] and uns["cellmamba"] {method, seed}; params: dataset, reference (pseudotime_key, label_key,
time_key, modality), settings (n_neighbors, normalize), extra; output.metrics: long metric rows,
output.per_cell: each method's DPT per cell (first seed), for the figure. The scoring's kNN graphs use
one fixed seed for every run.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.io import atomic_path
from cellmamba.metrics import score_trajectory_files, write_csv

metrics, per_cell = score_trajectory_files(snakemake.input.dataset, list(snakemake.input.embeddings),
                                           reference=dict(snakemake.params.reference),
                                           settings=dict(snakemake.params.settings),
                                           dataset=snakemake.params.dataset, extra=snakemake.params.extra)
for rec in metrics[metrics["note"] != ""].itertuples():
    log.info("%s seed %d: %s is NaN or 0: %s", rec.method, rec.seed, rec.metric, rec.note)
write_csv(metrics, snakemake.output.metrics)
with atomic_path(snakemake.output.per_cell) as tmp:
    per_cell.to_csv(tmp, index=False)

"""Rule score_integration: scib metrics (AvgBIO, AvgBATCH and their parts) of one embedding.

input.dataset: standard-schema h5ad (its log-normalised expression is PCR's unintegrated side);
input.embedding: h5ad, same cells, obsm['X_emb']; params: dataset, method, seed, extra;
output.metrics: long CSV. Scoring itself (kNN graph, Leiden) uses one fixed seed for every run.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.metrics import metrics_frame, score_embedding_file, write_csv
from cellmamba.metrics.tables import parameter_flags

scores = score_embedding_file(snakemake.input.dataset, snakemake.input.embedding)
for metric, note in scores.notes.items():
    log.info("%s is NaN: %s", metric, note)
# flag columns of the table row: the rule's (variant, simulated) and a model's parameter counts
extra = {**(snakemake.params.get("extra", None) or {}), **parameter_flags(snakemake.input.get("train"))}
frame = metrics_frame(scores, task="integration", dataset=snakemake.params.dataset,
                      method=snakemake.params.method, seed=snakemake.params.seed,
                      extra=extra)
write_csv(frame, snakemake.output.metrics)

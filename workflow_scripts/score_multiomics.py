"""Rule score_multiomics: FOSCTTM, omics mixing entropy, NMI / ARI of the joint embedding and
label transfer across modalities of one method's paired embedding.

input.embedding: paired-embedding h5ad (obs cell_type); params: dataset, method, seed, extra;
output.metrics: long CSV. Scoring uses one fixed seed for every run.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.metrics import metrics_frame, score_paired_embedding_file, write_csv
from cellmamba.metrics.tables import parameter_flags

scores = score_paired_embedding_file(snakemake.input.embedding)
log.info("%s / %s / seed %s: %s", snakemake.params.dataset, snakemake.params.method, snakemake.params.seed,
         ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
# flag columns of the table row: the rule's (variant, simulated) and a model's parameter counts
extra = {**(snakemake.params.get("extra", None) or {}), **parameter_flags(snakemake.input.get("train"))}
frame = metrics_frame(scores, task="multiomics", dataset=snakemake.params.dataset, method=snakemake.params.method,
                      seed=snakemake.params.seed, extra=extra)
write_csv(frame, snakemake.output.metrics)

"""Rule score_annotation: accuracy, macro precision / recall / F1 of one run's query predictions.

input.predictions: CSV (cell, split, cell_type, predicted), input.train (models: the run's train/, for its
parameter counts); params: dataset, method, seed, extra
(flag columns for the tables); output.metrics: long CSV; output.confusion: counts, true x predicted.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

import pandas as pd

from cellmamba.metrics import metrics_frame, score_predictions, write_csv
from cellmamba.metrics.tables import parameter_flags

path = snakemake.input.predictions
predictions = pd.read_csv(path, dtype=str, keep_default_na=False)   # labels such as "NA" stay labels
scores, confusion = score_predictions(predictions, source=str(path))
log.info("%s / %s / seed %s: %s", snakemake.params.dataset, snakemake.params.method, snakemake.params.seed,
         ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
for metric, note in scores.notes.items():
    log.info("%s: %s", metric, note)
# flag columns of the table row: the rule's (variant, simulated) and a model's parameter counts
extra = {**(snakemake.params.get("extra", None) or {}), **parameter_flags(snakemake.input.get("train"))}
frame = metrics_frame(scores, task="annotation", dataset=snakemake.params.dataset,
                      method=snakemake.params.method, seed=snakemake.params.seed,
                      extra=extra)
write_csv(frame, snakemake.output.metrics)
write_csv(confusion, snakemake.output.confusion, index=True)

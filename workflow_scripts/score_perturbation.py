"""Rule score_perturbation: Pearson delta (all genes / top-20 DE), MSE, overall and per GEARS
subgroup, and reverse-perturbation top-k of one method's predictions.

input.dataset, input.split, input.predictions; params: dataset, method, seed, extra;
output.metrics: long CSV (flags subgroup / match); output.per_condition: one row per test condition;
output.deltas: per-gene predicted and measured change from the control mean (the scatter draws it).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.metrics import perturbation_frame, score_perturbation_files, write_csv
from cellmamba.metrics.tables import parameter_flags

per_condition, summary, reverse = score_perturbation_files(snakemake.input.dataset, snakemake.input.split,
                                                           snakemake.input.predictions, deltas=snakemake.output.deltas)
for name, scores in summary.items():
    log.info("%s: %s", name, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
if reverse is not None:
    log.info("reverse perturbation (%d queries):\n%s", reverse.attrs["n_queries"], reverse.to_string())
# flag columns of the table row: the rule's (variant, simulated) and a model's parameter counts
extra = {**(snakemake.params.get("extra", None) or {}), **parameter_flags(snakemake.input.get("train"))}
frame = perturbation_frame(summary, reverse, dataset=snakemake.params.dataset, method=snakemake.params.method,
                           seed=snakemake.params.seed, extra=extra)
write_csv(frame, snakemake.output.metrics)
write_csv(per_condition.rename_axis("condition"), snakemake.output.per_condition, index=True)

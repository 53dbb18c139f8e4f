"""Rule rank_reconstruction: one model's reconstruction of the held-out cells' rank sequences.

input: model, dataset; params: method, dataset_name, init, pretrain_seed, lm, mask_ratio, settings;
output: metrics (long metric rows), per_cell, density (input x reconstructed rank histogram).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.gene_analyses import GeneAnalysisConfig, rank_reconstruction_files

p = snakemake.params
rank_reconstruction_files(snakemake.input.model, snakemake.input.dataset, method=p.method, init=p.init,
                          pretrain_seed=p.pretrain_seed, lm=p.lm, mask_ratio=p.mask_ratio,
                          config=GeneAnalysisConfig.from_dict(p.settings), dataset_name=p.dataset_name,
                          metrics_out=snakemake.output.metrics, per_cell_out=snakemake.output.per_cell,
                          density_out=snakemake.output.density)

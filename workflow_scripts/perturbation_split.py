"""Rule perturbation_split: GEARS 0.0.2 'simulation' split (seeded; test / val subgroups) and the
reverse-perturbation gene grid of one perturbation dataset, written as one JSON.

input.dataset: standard-schema h5ad (obs condition); params.settings: seed, train_gene_set_size,
combo_seen2_train_frac, reverse_genes; output.split: JSON.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.datasets.gears_split import make_split_file

s = dict(snakemake.params.settings)
make_split_file(snakemake.input.dataset, snakemake.output.split, seed=int(s["seed"]),
                train_gene_set_size=float(s["train_gene_set_size"]),
                combo_seen2_train_frac=float(s["combo_seen2_train_frac"]), reverse_genes=int(s["reverse_genes"]))

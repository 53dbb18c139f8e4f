"""Rule prepare_dataset: one registry dataset -> results/datasets/{dataset}.h5ad in the standard schema.

Input files are verified (known sha256; the lock file too when the rule passes params.lock_file),
read by the entry's reader, checked with validate_standard and written atomically with
uns["cellmamba"] provenance (reader, source files' sha256, versions, git revision).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.datasets import prepare_dataset

prepare_dataset(
    snakemake.params.entry,
    dict(snakemake.input.items()),
    snakemake.output[0],
    dataset=snakemake.params.dataset,
    lock_file=getattr(snakemake.params, "lock_file", None),
)

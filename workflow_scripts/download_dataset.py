"""Rule download_dataset: fetch one registry file into <data_dir>/<dataset>/<name>.

Checksum policy (DESIGN.md): a known sha256 must match; an unknown one is recorded in the lock
file on first download and verified afterwards. Archives are cached in <data_dir>/_archives/.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.datasets import download_file

dest = Path(snakemake.output[0])
file_key = snakemake.params.file_key
download_file(
    snakemake.params.entry["files"][file_key],
    dest,
    lock_file=snakemake.params.lock_file,
    key=f"{snakemake.wildcards.dataset}/{file_key}",
    archive_dir=dest.parent.parent / "_archives",
)

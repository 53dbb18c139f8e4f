"""Rule token_manifest: the corpus manifest over one tokenizer's shards, with its provenance."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import provenance, setup_logging

setup_logging(snakemake.log[0])

from cellmamba.tokenize import write_corpus_manifest

write_corpus_manifest(
    list(snakemake.input.shards),
    snakemake.output.manifest,
    provenance=provenance(snakemake.params.corpus_config),
)

"""Rule plot_umaps: UMAP grid of one dataset's embeddings (integration, or both modalities of
multi-omics), methods as columns, coloured by cell type and batch / modality.

input.embeddings: one embedding.h5ad per method; params: title, simulated, seed; output: png, pdf.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

log = setup_logging(snakemake.log[0])

from cellmamba.plots import embedding_umaps

data = embedding_umaps(list(snakemake.input.embeddings), snakemake.output.png, title=snakemake.params.title,
                       simulated=snakemake.params.simulated, seed=snakemake.params.seed)
log.info("%d methods, %d points -> %s", data["method"].nunique(), len(data), snakemake.output.png)

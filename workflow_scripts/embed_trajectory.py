"""Rule embed_trajectory: zero-shot cell embeddings of a trajectory dataset by a pretrained model
(params.init "pretrained") or its scratch control ("scratch": the same architecture, seeded random init).

input.dataset: standard-schema h5ad; input.model: the pretrained model directory; params: method, init,
seed, modality (var modality kept, or None), settings (batch_size, max_len, backend);
output.embedding: h5ad with obsm["X_emb"] and uns["cellmamba"] {method, seed, init, n_params, embedding}.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # cellmamba of this checkout

from cellmamba.runlog import setup_logging

setup_logging(snakemake.log[0])

from cellmamba.trajectory_embeddings import embed_dataset_file

settings = dict(snakemake.params.settings)
embed_dataset_file(snakemake.input.dataset, snakemake.input.model, snakemake.output.embedding,
                   method=snakemake.params.method, init=snakemake.params.init, seed=int(snakemake.params.seed),
                   modality=snakemake.params.modality, batch_size=int(settings["batch_size"]),
                   max_len=settings.get("max_len"), backend=settings["backend"])

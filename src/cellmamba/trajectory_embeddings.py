"""The trajectory task's model embeddings: every cell of a dataset embedded zero-shot by a pretrained
model (:func:`cellmamba.embed`, nothing fine-tuned), or by its scratch control (the same
architecture at a seeded random init), written as the embedding file the trajectory scoring reads
(:func:`cellmamba.metrics.trajectory.score_trajectory_files`).

Why zero-shot: scMamba's and SC-MAMBA2's trajectories are drawn on their models' cell embeddings;
a trajectory dataset has no labels to fine-tune on that would not also be the answer (the
pseudotime, the time points). What the tokenizers get from non-count data is
:func:`cellmamba.tasks.tokens.tokenize_dataset`'s rule (FPKM / TPM: each cell rescaled to 1e4,
log1p, then binned per cell, or ranked against the corpus medians after expm1).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_h5ad_checked, write_h5ad_atomic
from .keys import OBSM_EMBEDDING, UNS

__all__ = ["embed_dataset_file"]

log = logging.getLogger(__name__)


def embed_dataset_file(dataset: str | os.PathLike, model_dir: str | os.PathLike, out: str | os.PathLike, *,
                       method: str, init: str = "pretrained", seed: int = 0, modality: str | None = None,
                       batch_size: int = 64, max_len: int | None = None, backend: str = "auto",
                       vocabulary: str | os.PathLike | None = None):
    """Embed every cell of a prepared dataset with a pretrained model (or its scratch control)
    and write the embedding file atomically.

    Parameters
    ----------
    dataset
        A standard-schema h5ad (results/datasets/<dataset>.h5ad).
    model_dir
        A pretrained model directory (results/pretrain/<model>/model).
    out
        Output h5ad: the dataset's obs_names and obs, X empty (n_cells, 0), ``obsm["X_emb"]``
        float32 (n_cells, d_model), ``uns["cellmamba"]`` = {method, seed, init, n_params,
        embedding (what :func:`cellmamba.embed` recorded: pooling, tokenizer, max_len, genes
        used ...)}.
    method
        The table's name of the run (``<model>`` or ``<model>_scratch``).
    init, seed
        ``"pretrained"``, or ``"scratch"`` with its seed (:func:`cellmamba.embed`).
    modality
        Keep only the features of this var ``modality`` (BMMC CITE-seq: ``rna``); None: all.
    batch_size, max_len, backend
        As :func:`cellmamba.embed` (``max_len`` None: the model's training context).
    vocabulary
        Gene table when the model directory has no vocabulary.tsv.

    Returns
    -------
    The written AnnData.
    """
    import anndata as ad

    from .datasets.selection import select_modality
    from .embedding import checkpoint_info, embed

    adata = read_h5ad_checked(dataset)
    cells = select_modality(adata, modality, source=str(dataset))
    emb = embed(cells, model_dir, key_added=OBSM_EMBEDDING, vocabulary=vocabulary, max_len=max_len,
                batch_size=batch_size, backend=backend, progress=False, init=init, seed=seed)
    record = dict(cells.uns[UNS]["embeddings"][OBSM_EMBEDDING])
    if not np.all(np.isfinite(emb)):
        raise InputError(f"{model_dir}: the embedding of {dataset} holds non-finite values")
    used = record["n_genes_used"]
    log.info("%s: %d cells x %d features, %d of them in the vocabulary of %s (%s, values from %s)", dataset,
             cells.n_obs, cells.n_vars, used, model_dir, init, record["value_source"])
    n_params = int(checkpoint_info(model_dir)["n_parameters"])
    result = ad.AnnData(X=np.zeros((adata.n_obs, 0), dtype=np.float32), obs=adata.obs.copy())
    result.obsm[OBSM_EMBEDDING] = np.asarray(emb, dtype=np.float32)
    result.uns[UNS] = {"method": method, "seed": int(seed), "init": init, "n_params": n_params,
                       "model_dir": str(Path(model_dir)), "modality": modality or "all", "embedding": record}
    write_h5ad_atomic(result, out)
    log.info("%s: embedding %s -> %s", method, result.obsm[OBSM_EMBEDDING].shape, out)
    return result

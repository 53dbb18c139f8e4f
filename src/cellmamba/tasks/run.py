"""File-level entry points of the fine-tuning rules: read the dataset and the vocabulary, select
genes as the protocol says, fine-tune, write the outputs atomically (with provenance)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_path, read_h5ad_checked
from ..runlog import provenance
from .annotate import run_annotation
from .finetune import FinetuneConfig
from .integrate import run_integration
from .tokens import select_genes

__all__ = ["finetune_annotation_files", "finetune_integration_files", "write_embedding"]

log = logging.getLogger(__name__)


def _prepare(dataset: str | os.PathLike, vocabulary: str | os.PathLike, config: FinetuneConfig, genes: dict | None):
    adata = read_h5ad_checked(dataset)
    vocab = pd.read_csv(vocabulary, sep="\t")
    genes = genes or {}
    mask = select_genes(adata, n_hvg=genes.get("n_hvg"), min_counts=genes.get("min_counts", 0), source=str(dataset))
    # scGPT: max_seq_len = n_genes + 1 (CLS); never longer than the selected genes need
    max_len = min(config.max_len, int(mask.sum()) + 1)
    return adata, vocab, mask, dataclasses.replace(config, max_len=max_len)


def _run_info(path: Path, model_dir, config: FinetuneConfig, genes_used: int, extra: dict) -> None:
    from ..models import CellModel

    n_params = sum(p.numel() for p in CellModel.from_pretrained(model_dir, backend="torch").parameters())
    info = provenance({"model": str(model_dir), "pretrained_params": n_params, "n_genes_selected": genes_used,
                       "config": dataclasses.asdict(config), **extra})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=str) + "\n")


def finetune_annotation_files(dataset, model_dir, vocabulary, *, config: FinetuneConfig, predictions,
                              train_dir, genes: dict | None = None) -> None:
    """Rule finetune_annotation: predictions CSV (cell, split, cell_type, predicted) + train dir."""
    adata, vocab, mask, config = _prepare(dataset, vocabulary, config, genes)
    with atomic_path(train_dir) as tmp:
        table = run_annotation(adata, model_dir, vocab, config=config, out_dir=tmp, genes=mask)
        _run_info(tmp / "run.json", model_dir, config, int(mask.sum()), {"dataset": str(dataset)})
    with atomic_path(predictions) as tmp:
        table.to_csv(tmp, index=False)


def write_embedding(adata, emb: np.ndarray, path, *, info: dict) -> None:
    """An h5ad with ``adata``'s obs and obs_names, obsm['X_emb'] = emb, no X (n_cells x 0)."""
    import anndata as ad

    out = ad.AnnData(obs=adata.obs.copy(), obsm={"X_emb": np.asarray(emb, dtype=np.float32)})
    out.uns["cellmamba"] = json.loads(json.dumps(info, default=str))
    with atomic_path(path) as tmp:
        out.write_h5ad(tmp.with_suffix(".h5ad"))
        tmp.with_suffix(".h5ad").rename(tmp)


def finetune_integration_files(dataset, model_dir, vocabulary, *, config: FinetuneConfig, embedding,
                               train_dir, genes: dict | None = None) -> None:
    """Rule finetune_integration: embedding h5ad (obsm['X_emb']) + train dir."""
    adata, vocab, mask, config = _prepare(dataset, vocabulary, config, genes)
    with atomic_path(train_dir) as tmp:
        emb = run_integration(adata, model_dir, vocab, config=config, out_dir=tmp, genes=mask)
        _run_info(tmp / "run.json", model_dir, config, int(mask.sum()), {"dataset": str(dataset)})
    write_embedding(adata, emb, embedding, info={"method": Path(model_dir).parent.name, "seed": config.seed,
                                                 "n_genes_selected": int(mask.sum()), "genes": genes or {}})

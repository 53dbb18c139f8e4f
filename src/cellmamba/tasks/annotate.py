"""Cell-type annotation: fine-tune a pretrained model with a classifier on the reference
split, predict the query split (scGPT / SC-MAMBA2 protocol, DATASETS.md §2-§4).

Label codes are taken over the reference labels only: a query class absent from the
reference can never be predicted (scGPT codes the union, which gives such classes codes the
classifier never trains on: the same predictions); the scoring reports those classes.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._util import seed_all
from ..errors import InputError
from ..io import atomic_path
from ..keys import OBS_CELL_TYPE, OBS_SPLIT
from ..models import HeadConfig
from ..train import train
from .finetune import (ClassificationObjective, FinetuneConfig, collator_for, embed_cells, label_codes,
                       load_for_finetuning, model_tokenizer, pick_device, resolve_pooling, split_train_valid,
                       train_valid_loaders)
from .tokens import TokenCells, tokenize_dataset

__all__ = ["run_annotation"]

log = logging.getLogger(__name__)


def run_annotation(adata, model_dir: str | os.PathLike, vocabulary: pd.DataFrame, *, config: FinetuneConfig,
                   out_dir: str | os.PathLike, genes: np.ndarray | None = None, device=None,
                   aliases: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fine-tune on the reference cells, predict every cell.

    Parameters
    ----------
    adata
        Standard-schema dataset with obs ``cell_type`` and ``split`` (``reference`` / ``query``).
    model_dir
        A pretrained model directory (``results/pretrain/<model>/model``).
    vocabulary
        The pretraining gene table (gene_stats.tsv).
    config
        :class:`FinetuneConfig`.
    out_dir
        Training outputs (checkpoints, metrics.csv, model/) go here.
    genes
        bool (n_vars,) genes to use (default all).
    aliases
        Legacy-symbol alias table (:func:`cellmamba.genes.read_aliases`) for symbol-keyed data.

    Returns
    -------
    DataFrame with columns ``cell``, ``split``, ``cell_type``, ``predicted`` (empty for
    reference cells), one row per cell in dataset order.
    """
    seed_all(config.seed)
    out_dir = Path(out_dir)
    split = adata.obs[OBS_SPLIT].astype(str).to_numpy()
    ref = np.flatnonzero(split == "reference")
    query = np.flatnonzero(split == "query")
    if len(ref) == 0 or len(query) == 0:
        raise InputError(f"annotation: need reference and query cells, got {len(ref)} and {len(query)}")
    truth = adata.obs[OBS_CELL_TYPE].astype(str)
    codes_ref, classes = label_codes(truth.iloc[ref])
    labels = np.full(adata.n_obs, -1, dtype=np.int64)
    labels[ref] = codes_ref

    device = pick_device(device)
    tokenizer = model_tokenizer(model_dir)
    pooling = resolve_pooling(config, tokenizer)
    model = load_for_finetuning(model_dir, {"classifier": HeadConfig(kind="classifier", n_out=len(classes),
                                                                     pooling=pooling, dropout=config.dropout)},
                                backend=config.backend, seed=config.seed, init=config.init)
    tokens = tokenize_dataset(adata, vocabulary, tokenizer=tokenizer, max_len=config.max_len, genes=genes,
                              n_bins=model.config.embedding.n_bins, source="annotation dataset", aliases=aliases)
    train_pos, valid_pos = split_train_valid(codes_ref, config.valid_fraction, config.seed)
    train_cells, valid_cells = ref[train_pos], ref[valid_pos]
    plain = collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=config.seed)
    loader, valid, tcfg = train_valid_loaders(tokens, train_cells, valid_cells, plain, config)
    log.info("annotation: %d classes, %d train / %d valid reference cells, %d query cells, %d steps",
             len(classes), len(train_cells), len(valid_cells), len(query), tcfg.max_steps)
    train(model, ClassificationObjective(labels), loader, tcfg, out_dir=out_dir, eval_data=valid, device=device)

    _, logits = embed_cells(model, TokenCells(tokens), plain, pooling=pooling, batch_size=config.embed_batch_size,
                            device=device, classifier=True)
    predicted = np.asarray(classes, dtype=object)[logits.argmax(1)]
    predicted[split != "query"] = ""
    with atomic_path(out_dir / "classes.json") as tmp:
        tmp.write_text(json.dumps({"classes": classes, "tokens": {"tokenizer": tokenizer, "values": tokens.value_source,
                                                                  "n_genes_used": tokens.n_genes_used,
                                                                  "n_genes_unmapped": tokens.n_genes_unmapped}},
                                  indent=1))
    return pd.DataFrame({"cell": adata.obs_names.astype(str), "split": split, "cell_type": truth.to_numpy(),
                         "predicted": predicted})

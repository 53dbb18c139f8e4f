"""Batch integration: self-supervised fine-tuning with the recipe's masked objective (masked
values for binned models, masked genes for rank models) plus an adversarial batch
discriminator behind gradient reversal, then cell embeddings of ALL cells (scGPT / SC-MAMBA2:
scib runs on the whole dataset; there is no query split). As scGPT's tutorial, a seeded random
``valid_fraction`` of the cells is held out of training and validates every epoch; with
``keep_best`` the epoch of lowest validation loss (of the masked objective: see
:class:`~cellmamba.tasks.finetune.AdversarialObjective`) embeds the cells.

The adversary (``adversarial_*`` of :class:`~cellmamba.tasks.FinetuneConfig`): the reversal
weight rises from 0 to ``adversarial_weight`` (``adversarial_schedule``, DANN's by default) and
the discriminator, a fresh head, learns at ``adversarial_lr_scale`` times ``lr`` in an AdamW
group of its own. Without both it stayed at chance (ln(n_batches)) while a linear probe still
read the batch from the embeddings: a discriminator that learns no faster than the encoder
moves is fooled without the batch being removed (benchmarks/README.md, "Adversarial batch term").
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .._util import seed_all
from ..errors import InputError
from ..keys import OBS_BATCH
from ..models import HeadConfig
from ..models.model import read_model_config
from ..train import train
from ..train.objectives import MaskedGeneObjective, MaskedValueObjective
from .finetune import (AdversarialObjective, FinetuneConfig, collator_for, embed_cells, label_codes,
                       load_for_finetuning, model_tokenizer, pick_device, resolve_pooling, split_train_valid,
                       train_valid_loaders)
from .tokens import TokenCells, tokenize_dataset

__all__ = ["run_integration"]

log = logging.getLogger(__name__)


def run_integration(adata, model_dir: str | os.PathLike, vocabulary: pd.DataFrame, *, config: FinetuneConfig,
                    out_dir: str | os.PathLike, genes: np.ndarray | None = None, device=None,
                    aliases: pd.DataFrame | None = None) -> np.ndarray:
    """Fine-tune (self-supervised + adversarial) on all but the validation cells, return the
    embeddings of every cell.

    Parameters
    ----------
    adata
        Standard-schema dataset with obs ``batch``.
    model_dir, vocabulary, config, out_dir, genes, aliases
        As :func:`cellmamba.tasks.run_annotation`.

    Returns
    -------
    float32 (n_cells, d_model): the pooled embedding of every cell, in dataset order (not
    normalised; the metrics L2-normalise).
    """
    seed_all(config.seed)
    if OBS_BATCH not in adata.obs:
        raise InputError(f"integration: obs column '{OBS_BATCH}' is required")
    batches, names = label_codes(adata.obs[OBS_BATCH])
    if len(names) < 2:
        log.warning("integration: only one batch (%s); the adversarial term has nothing to remove", names)
    device = pick_device(device)
    saved = read_model_config(model_dir)  # tokenizer and width, without loading the weights twice
    tokenizer = model_tokenizer(model_dir)
    keep = ("value",) if tokenizer == "binned" else ("gene",)
    pooling = resolve_pooling(config, tokenizer)
    heads = {"batch": HeadConfig(kind="classifier", n_out=max(len(names), 2), pooling="cls",
                                 hidden=saved.backbone.d_model)}
    model = load_for_finetuning(model_dir, heads, keep_heads=keep, backend=config.backend, seed=config.seed,
                                init=config.init)
    for p in model.heads["batch"].parameters():  # its own AdamW group (cellmamba.train.schedule.param_groups)
        p._lr_scale = config.adversarial_lr_scale
    tokens = tokenize_dataset(adata, vocabulary, tokenizer=tokenizer, max_len=config.max_len, genes=genes,
                              n_bins=model.config.embedding.n_bins, source="integration dataset", aliases=aliases)
    ssl = MaskedValueObjective() if tokenizer == "binned" else MaskedGeneObjective()
    objective = AdversarialObjective(ssl, batches, weight=config.adversarial_weight if len(names) > 1 else 0.0,
                                     pooling=pooling, schedule=config.adversarial_schedule)
    masked = collator_for(tokens, mask_ratio=config.mask_ratio, include_zeros=config.include_zeros, seed=config.seed)
    data = TokenCells(tokens)
    train_cells, valid_cells = split_train_valid(batches, config.valid_fraction, config.seed)
    loader, valid, tcfg = train_valid_loaders(tokens, train_cells, valid_cells, masked, config)
    log.info("integration: %d cells (%d train / %d valid), %d batches, %s objective + adversarial (weight %g, %s "
             "schedule, discriminator lr x%g), %d steps", len(data), len(train_cells), len(valid_cells), len(names),
             type(ssl).__name__, config.adversarial_weight, config.adversarial_schedule, config.adversarial_lr_scale,
             tcfg.max_steps)
    train(model, objective, loader, tcfg, out_dir=Path(out_dir), eval_data=valid, device=device)
    plain = collator_for(tokens, mask_ratio=0.0, include_zeros=config.include_zeros, seed=config.seed)
    emb, _ = embed_cells(model, data, plain, pooling=pooling, batch_size=config.embed_batch_size, device=device)
    return emb

"""Cell embeddings of a pretrained model for any AnnData: ``cellmamba.embed(adata, checkpoint)``.

A checkpoint is a model directory written by pretraining (``results/pretrain/<model>/model/``):
``config.json`` + ``model.safetensors`` + ``vocabulary.tsv`` (the gene table in token order,
i.e. the rows of the corpus' gene_stats.tsv). The dataset's genes are matched to that
vocabulary (Ensembl ids, else symbols: :func:`cellmamba.tasks.tokens.vocabulary_index`),
tokenized with the model's own tokenizer (rank or binned, :func:`~cellmamba.tasks.tokens.tokenize_dataset`),
and every cell is embedded in batches (:func:`~cellmamba.tasks.finetune.embed_cells`; bf16
autocast on CUDA). The embedding lands in ``adata.obsm["X_cellmamba_<recipe>"]``.

Pooling ("auto"): binned models (scmamba2) take the CLS state, as scGPT / SC-MAMBA2 read
their cell embedding; rank models (genemamba) the mean over the cell's gene states
(GeneMamba's published cell embedding is also a mean over genes). Nothing is masked and no
unexpressed genes are added when embedding (scGPT's ``embed_data`` likewise feeds the
expressed genes of each cell, ``include_zero_gene=False`` being its default for embedding).

Departures: long cells are cut to the model's training context (its ``pretrain_config.json``
``context_length`` beside the model directory, else 2048) by the tokenizer's rule (binned:
the highest counts; rank: the top-ranked genes), where scGPT samples genes at random.
Patch models (the scmamba towers) are not supported yet: their inputs are genomic-order
patches, not gene tokens.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .models.checkpoint import VOCABULARY_NAME
from .errors import InputError
from .keys import LAYER_COUNTS, UNS, UNS_X_KIND, obsm_embedding

__all__ = ["VOCABULARY_NAME", "DEFAULT_MAX_LEN", "embed", "tokenize_for_model", "read_model_vocabulary",
           "model_recipe", "training_context", "checkpoint_info"]

log = logging.getLogger(__name__)

#: tokens per cell when the checkpoint does not say how long its training context was
DEFAULT_MAX_LEN = 2048
#: the census-pretrained recipe reading each tokenizer
_TOKENIZER_RECIPE = {"binned": "scmamba2", "rank": "genemamba"}


def _config(checkpoint):
    from .models.model import read_model_config

    return read_model_config(checkpoint)


def model_recipe(config) -> str:
    """The recipe name of a model (its obsm key suffix): ``"scmamba2"`` (binned tokens),
    ``"genemamba"`` (rank tokens), ``"<recipe>_transformer"`` for a Transformer peer.

    ``config``: a :class:`~cellmamba.models.CellModelConfig` or a model directory."""
    if isinstance(config, (str, os.PathLike)):
        config = _config(config)
    kind = config.embedding.kind
    if kind not in _TOKENIZER_RECIPE:
        raise InputError(f"this model reads {kind!r} inputs; embedding supports rank (genemamba) and binned "
                         "(scmamba2) models only (patch models, the scmamba towers, read another format)")
    recipe = _TOKENIZER_RECIPE[kind]
    return f"{recipe}_transformer" if config.backbone.arch == "transformer" else recipe


def training_context(checkpoint: str | os.PathLike) -> int | None:
    """Tokens per cell the model was pretrained with: ``context_length`` of the run's
    ``pretrain_config.json`` (beside the model directory), or None when there is none."""
    path = Path(checkpoint).parent / "pretrain_config.json"
    try:
        value = json.loads(path.read_text())["config"]["context_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) and value >= 2 else None


def read_model_vocabulary(checkpoint: str | os.PathLike, vocabulary: str | os.PathLike | None = None,
                          *, config=None) -> pd.DataFrame:
    """The gene table of ``checkpoint`` (its vocabulary.tsv, or ``vocabulary``: a gene_stats.tsv
    path), checked against the model's embedding size.

    Returns
    -------
    DataFrame (n_genes,) with columns feature_id, feature_name[, nonzero_median], in token order.
    """
    from .vocab import N_SPECIAL

    config = config if config is not None else _config(checkpoint)
    path = Path(vocabulary) if vocabulary is not None else Path(checkpoint) / VOCABULARY_NAME
    if not path.is_file():
        if vocabulary is not None:
            raise InputError(f"{path}: no such file (expected a gene table in vocabulary order, gene_stats.tsv)")
        raise InputError(f"{checkpoint}: the model directory has no {VOCABULARY_NAME} (models pretrained without "
                         "gene_stats lack it); pass vocabulary= (CLI: --vocabulary) with the gene_stats.tsv of "
                         "its pretraining corpus, e.g. results/qc/gene_stats.tsv")
    try:
        table = pd.read_csv(path, sep="\t")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a tab-separated gene table ({exc})") from exc
    expected = config.embedding.vocab_size - N_SPECIAL
    if len(table) != expected:
        raise InputError(f"{path}: {len(table)} genes, but the model at {checkpoint} has {expected} gene tokens "
                         f"(vocab_size {config.embedding.vocab_size} incl. {N_SPECIAL} special); "
                         "expected the gene table of its pretraining corpus")
    return table


def _is_integer_valued(X) -> bool:
    data = X.data if sp.issparse(X) else np.asarray(X)
    return bool(np.all(np.isfinite(data)) and np.all(data >= 0) and np.all(np.mod(data, 1) == 0))


def _with_x_kind(adata, source: str):
    """``(adata, x_kind)``: ``adata`` itself when it says what X holds (or has layer counts);
    otherwise integer-valued non-negative X is taken as counts, through a light stand-in
    AnnData sharing X and var (the caller's object is not modified)."""
    import anndata as ad

    uns = adata.uns.get(UNS, {})
    kind = uns.get(UNS_X_KIND) if isinstance(uns, dict) else None
    if kind is not None or LAYER_COUNTS in adata.layers:
        return adata, kind or "counts"
    if adata.X is None or not _is_integer_valued(adata.X):
        raise InputError(f"{source}: uns['{UNS}']['{UNS_X_KIND}'] is not set and X is not raw counts (non-negative "
                         f"integers); say what X holds, e.g. adata.uns['{UNS}'] = {{'{UNS_X_KIND}': 'log1p_norm'}} "
                         "for log1p(counts / total x 1e4), or put raw counts in layers['counts']")
    log.info("%s: uns['%s']['%s'] not set; X holds non-negative integers, read as raw counts", source, UNS, UNS_X_KIND)
    stand_in = ad.AnnData(X=adata.X, var=adata.var, uns={UNS: {UNS_X_KIND: "counts"}})
    return stand_in, "counts"


def tokenize_for_model(adata, checkpoint: str | os.PathLike, *, vocabulary: str | os.PathLike | None = None,
                       max_len: int | None = None, source: str = "adata"):
    """The tokens ``checkpoint``'s model reads for every cell of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes: raw counts (X or layers["counts"]) or log-normalised X with
        ``uns["cellmamba"]["x_kind"]`` set (integer X without it is taken as counts).
        Genes: Ensembl ids (var ``gene_id`` or the index) or symbols (var ``gene_name`` or the index).
    checkpoint
        A model directory (config.json, model.safetensors, vocabulary.tsv).
    vocabulary
        Gene table in token order (gene_stats.tsv) when the directory has no vocabulary.tsv.
    max_len
        Tokens per cell (binned: CLS included). Default: the model's training context
        (:func:`training_context`, else 2048), lowered to the longest cell's length.

    Returns
    -------
    :class:`~cellmamba.tasks.tokens.DatasetTokens`, plus ``x_kind`` (what X was read as).
    """
    from .tasks.tokens import tokenize_dataset

    config = _config(checkpoint)
    model_recipe(config)  # patch models: a clear error before any work
    table = read_model_vocabulary(checkpoint, vocabulary, config=config)
    tokenizer = config.embedding.kind
    if adata.n_obs == 0:
        raise InputError(f"{source}: has no cells")
    if max_len is None:
        max_len = training_context(checkpoint) or DEFAULT_MAX_LEN
    elif not isinstance(max_len, (int, np.integer)) or max_len < 2:
        raise InputError(f"max_len must be an integer >= 2, got {max_len!r}")
    data, kind = _with_x_kind(adata, source)
    tokens = tokenize_dataset(data, table, tokenizer=tokenizer, max_len=int(max_len), n_bins=config.embedding.n_bins,
                              source=source)
    # the tokens of a cell shorter than max_len do not depend on max_len: report the length used
    tokens.max_len = int(min(max_len, max(int(np.diff(tokens.batch.offsets).max()), 1)))
    return tokens, kind


def embed(adata, checkpoint: str | os.PathLike, *, vocabulary: str | os.PathLike | None = None,
          key: str | None = None, max_len: int | None = None, batch_size: int = 64, pooling: str = "auto",
          device=None, backend: str = "auto", progress: bool = True) -> np.ndarray:
    """Embed every cell of ``adata`` with a pretrained model.

    Parameters
    ----------
    adata
        AnnData (n_cells, n_genes); see :func:`tokenize_for_model` for what X must hold.
    checkpoint
        A model directory (``results/pretrain/<model>/model``).
    vocabulary
        Gene table in token order (gene_stats.tsv of the pretraining corpus) when the model
        directory has no vocabulary.tsv.
    key
        obsm key; default ``X_cellmamba_<recipe>`` (:func:`cellmamba.keys.obsm_embedding`).
    max_len
        Tokens per cell (binned: CLS included); default the model's training context.
    batch_size
        Cells per forward pass.
    pooling
        "auto" (binned: "cls", rank: "mean"), "cls", "mean" or "last"; "cls" and "last" of a
        bidirectional model merged at the end of the stack read each direction where it has
        seen the whole cell (:func:`cellmamba.models.heads.pool_cells`).
    device
        torch device; default CUDA when available, else CPU.
    backend
        SSM kernels: "auto" (mamba_ssm's kernels on CUDA when installed), "torch", "cuda".
    progress
        Show a tqdm progress bar.

    Returns
    -------
    float32 (n_cells, d_model), also written to ``adata.obsm[key]``; what was done is recorded
    in ``adata.uns["cellmamba"]["embeddings"][key]`` (checkpoint, recipe, pooling, tokenizer,
    max_len, value_source, x_kind, n_genes_used, n_genes_unmapped, vocabulary, device).
    """
    from . import __version__
    from .models import CellModel
    from .tasks.finetune import FinetuneConfig, collator_for, embed_cells, pick_device, resolve_pooling
    from .tasks.tokens import TokenCells

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    checkpoint = Path(checkpoint)
    config = _config(checkpoint)
    recipe = model_recipe(config)
    key = key or obsm_embedding(recipe)
    if pooling not in ("auto", "cls", "mean", "last"):
        raise InputError(f"pooling must be 'auto', 'cls', 'mean' or 'last', got {pooling!r}")
    pooling = resolve_pooling(FinetuneConfig(pooling=pooling), config.embedding.kind)
    uns = adata.uns.get(UNS, {})
    if not isinstance(uns, dict):
        raise InputError(f"adata.uns['{UNS}'] is a {type(uns).__name__}; expected a dict")
    tokens, kind = tokenize_for_model(adata, checkpoint, vocabulary=vocabulary, max_len=max_len)
    model = CellModel.from_pretrained(checkpoint, backend=backend)
    device = pick_device(device)
    emb, _ = embed_cells(model, TokenCells(tokens), collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=0),
                         pooling=pooling, batch_size=int(batch_size), device=device, progress=progress)
    adata.obsm[key] = emb
    record = {"checkpoint": str(checkpoint.resolve()), "recipe": recipe, "pooling": pooling,
              "tokenizer": tokens.tokenizer, "max_len": tokens.max_len, "value_source": tokens.value_source,
              "x_kind": kind, "n_genes_used": tokens.n_genes_used, "n_genes_unmapped": tokens.n_genes_unmapped,
              "vocabulary": str(Path(vocabulary).resolve()) if vocabulary is not None
              else str((checkpoint / VOCABULARY_NAME).resolve()),
              "device": str(device), "cellmamba_version": __version__}
    adata.uns.setdefault(UNS, {}).setdefault("embeddings", {})[key] = record
    log.info("embedded %d cells with %s (%s, %s pooling) into obsm[%r]", emb.shape[0], checkpoint, recipe, pooling, key)
    return emb


def checkpoint_info(checkpoint: str | os.PathLike) -> dict:
    """A summary of a model directory, read from config.json and the safetensors header
    (the weights are not loaded): recipe, tokenizer, backbone, sizes, parameter counts, heads,
    vocabulary."""
    from safetensors import safe_open

    from .models.checkpoint import WEIGHTS_NAME
    from .vocab import N_SPECIAL

    checkpoint = Path(checkpoint)
    config = _config(checkpoint)
    weights = checkpoint / WEIGHTS_NAME
    if not weights.is_file():
        raise InputError(f"{weights}: no such file (expected the weights of a cellmamba model directory)")
    counts: dict[str, int] = {}
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            for name in fh.keys():
                part = name.split(".")[0]
                counts[part] = counts.get(part, 0) + math.prod(fh.get_slice(name).get_shape())
    except Exception as exc:  # safetensors raises its own types for damaged headers
        from .errors import CorruptFileError

        raise CorruptFileError(f"{weights}: unreadable safetensors header ({type(exc).__name__}: {exc})") from exc
    emb, bb = config.embedding, config.backbone
    try:
        recipe = model_recipe(config)
    except InputError:
        recipe = None
    mamba = bb.arch != "transformer"
    return {
        "checkpoint": str(checkpoint), "recipe": recipe, "tokenizer": emb.kind,
        "n_bins": emb.n_bins if emb.kind == "binned" else None,
        "arch": bb.arch, "d_model": bb.d_model, "n_layers": bb.n_layers,
        "d_state": bb.d_state if mamba else None, "n_heads": None if mamba else bb.n_heads,
        "n_parameters": sum(counts.values()), "n_parameters_backbone": counts.get("backbone", 0),
        "heads": {name: h.kind for name, h in config.heads.items()},
        "vocab_size": emb.vocab_size if emb.kind != "patch" else None,
        "n_genes": emb.vocab_size - N_SPECIAL if emb.kind != "patch" else None,
        "vocabulary_tsv": (checkpoint / VOCABULARY_NAME).is_file(),
        "context_length": training_context(checkpoint),
    }

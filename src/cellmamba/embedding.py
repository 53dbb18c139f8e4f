"""Cell embeddings of a pretrained model for any AnnData: ``cellmamba.embed(adata, checkpoint)``.

A checkpoint is a model directory written by pretraining (``results/pretrain/<model>/model/``):
``config.json`` + ``model.safetensors`` + ``vocabulary.tsv`` (the gene table in token order,
i.e. the rows of the corpus' gene_stats.tsv) + ``inference.json`` (the training context length,
the corpus' tokenizer settings, the pooling: :func:`cellmamba.train.pretrain.inference_settings`).
Everything embedding reads is inside the directory, so a copy elsewhere embeds identically. A
directory saved before ``inference.json`` existed falls back to the run's
``../pretrain_config.json`` (logged); with neither, the context length is an error unless
``max_len`` is given (no silent default). The dataset's genes are matched to that
vocabulary (Ensembl ids, else symbols: :func:`cellmamba.tasks.tokens.vocabulary_index`),
tokenized with the model's own tokenizer (rank or binned, :func:`~cellmamba.tasks.tokens.tokenize_dataset`),
and every cell is embedded in batches (:func:`~cellmamba.tasks.finetune.embed_cells`; bf16
autocast on CUDA). The embedding lands in ``adata.obsm["X_cellmamba_<recipe>"]``.

Pooling ("auto"): binned models (scmamba2) take the CLS state, as scGPT / SC-MAMBA2 read
their cell embedding; rank models (genemamba) the mean over the cell's gene states
(GeneMamba's published cell embedding is also a mean over genes). Nothing is masked and no
unexpressed genes are added when embedding (scGPT's ``embed_data`` likewise feeds the
expressed genes of each cell, ``include_zero_gene=False`` being its default for embedding).

Departures: long cells are cut to the model's training context (``context_length`` of its
``inference.json``) by the tokenizer's rule (binned:
the highest counts; rank: the top-ranked genes), where scGPT samples genes at random.
Patch models (the scmamba towers) are not supported yet: their inputs are genomic-order
patches, not gene tokens.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .models.checkpoint import INFERENCE_FORMAT, INFERENCE_NAME, INFERENCE_VERSION, VOCABULARY_NAME
from .errors import CorruptFileError, InputError
from .io import read_json_object
from .keys import LAYER_COUNTS, UNS, UNS_X_KIND, obsm_embedding

__all__ = ["VOCABULARY_NAME", "INFERENCE_NAME", "embed", "tokenize_for_model", "read_model_vocabulary",
           "model_recipe", "read_inference_settings", "training_context", "checkpoint_info"]

log = logging.getLogger(__name__)

#: the run's settings beside a model directory saved before inference.json (the fallback)
_RUN_CONFIG = "pretrain_config.json"
_POOLINGS = ("cls", "mean", "last")
#: the census-pretrained recipe reading each tokenizer
_TOKENIZER_RECIPE = {"binned": "scmamba2", "rank": "genemamba"}


def _config(checkpoint):
    from .models.model import read_model_config

    return read_model_config(checkpoint)


def model_recipe(config) -> str:
    """The recipe name of a model (its obsm key suffix): ``"scmamba2"`` (binned tokens),
    ``"genemamba"`` (rank tokens), ``"<recipe>_transformer"`` for a Transformer peer,
    ``"<recipe>_u"`` for a unidirectional Mamba (the ablation GeneMamba_U).

    ``config``: a :class:`~cellmamba.models.CellModelConfig` or a model directory."""
    if isinstance(config, (str, os.PathLike)):
        config = _config(config)
    kind = config.embedding.kind
    if kind not in _TOKENIZER_RECIPE:
        raise InputError(f"this model reads {kind!r} inputs; embedding supports rank (genemamba) and binned "
                         "(scmamba2) models only (patch models, the scmamba towers, read another format)")
    recipe = _TOKENIZER_RECIPE[kind]
    if config.backbone.arch == "transformer":
        return f"{recipe}_transformer"
    return f"{recipe}_u" if config.backbone.arch in ("mamba1", "mamba2") else recipe  # unidirectional ablation


def read_inference_settings(checkpoint: str | os.PathLike, *, config=None) -> dict | None:
    """The model directory's ``inference.json``, checked; None when it has none (saved before).

    Raises
    ------
    InputError / CorruptFileError
        Naming the file and the key: not JSON, another format, ``context_length`` missing or
        not an integer >= 2, ``pooling`` not one of cls / mean / last, or a ``tokenizer`` /
        ``tokenizer_settings.n_bins`` that differs from the model's config.json.
    """
    path = Path(checkpoint) / INFERENCE_NAME
    if not path.exists():
        return None
    data = read_json_object(path, what=f"the {INFERENCE_NAME} of a cellmamba model directory")
    if data.get("format") != INFERENCE_FORMAT or data.get("format_version") != INFERENCE_VERSION:
        raise InputError(f"{path}: format {data.get('format')!r} version {data.get('format_version')!r}; this "
                         f"cellmamba reads {INFERENCE_FORMAT!r} version {INFERENCE_VERSION}")
    value = data.get("context_length")
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise CorruptFileError(f"{path}: context_length is {value!r}; expected the training context "
                               "(an integer >= 2, written by pretraining)")
    if data.get("pooling") not in _POOLINGS:
        raise CorruptFileError(f"{path}: pooling is {data.get('pooling')!r}; expected one of {_POOLINGS}")
    config = config if config is not None else _config(checkpoint)
    kind = config.embedding.kind
    if data.get("tokenizer") != kind:
        raise InputError(f"{path}: tokenizer {data.get('tokenizer')!r}, but {Path(checkpoint) / 'config.json'} "
                         f"is a model of {kind!r} tokens (files of two models mixed?)")
    n_bins = (data.get("tokenizer_settings") or {}).get("n_bins")
    if kind == "binned" and n_bins is not None and n_bins != config.embedding.n_bins:
        raise InputError(f"{path}: tokenizer_settings.n_bins {n_bins!r}, but the model's config.json has "
                         f"n_bins {config.embedding.n_bins} (files of two models mixed?)")
    return data


def _run_config_context(checkpoint: Path) -> int | None:
    """``config.context_length`` of ``checkpoint/../pretrain_config.json``, None when unusable."""
    try:
        value = json.loads((checkpoint.parent / _RUN_CONFIG).read_text())["config"]["context_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 2 else None


def _training_context(checkpoint: str | os.PathLike, *, config=None) -> tuple[int | None, str | None]:
    """(context length, the file it was read from), or (None, None)."""
    checkpoint = Path(checkpoint)
    settings = read_inference_settings(checkpoint, config=config)
    if settings is not None:
        return settings["context_length"], str(checkpoint / INFERENCE_NAME)
    value = _run_config_context(checkpoint)
    if value is None:
        return None, None
    source = checkpoint.parent / _RUN_CONFIG
    log.info("%s: no %s (saved before model directories carried their inference settings): context_length %d "
             "read from %s; this copy of the directory only works beside that file", checkpoint, INFERENCE_NAME,
             value, source)
    return value, str(source)


def training_context(checkpoint: str | os.PathLike) -> int | None:
    """Tokens per cell the model was pretrained with: ``context_length`` of its
    ``inference.json``; for a directory saved before that file, of the run's
    ``pretrain_config.json`` beside it (logged); None when neither says."""
    return _training_context(checkpoint)[0]


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
        (:func:`training_context`), lowered to the longest cell's length.

    Returns
    -------
    :class:`~cellmamba.tasks.tokens.DatasetTokens` (its ``max_len_from``: where ``max_len``
    came from), plus ``x_kind`` (what X was read as).

    Raises
    ------
    InputError
        ``max_len`` not given and the model directory does not say its training context
        (no inference.json, no ../pretrain_config.json).
    """
    from .tasks.tokens import tokenize_dataset

    config = _config(checkpoint)
    model_recipe(config)  # patch models: a clear error before any work
    table = read_model_vocabulary(checkpoint, vocabulary, config=config)
    tokenizer = config.embedding.kind
    if adata.n_obs == 0:
        raise InputError(f"{source}: has no cells")
    if max_len is None:
        max_len, max_len_from = _training_context(checkpoint, config=config)
        if max_len is None:
            raise InputError(f"{checkpoint}: the model's training context (context_length) is not known: expected "
                             f"in {Path(checkpoint) / INFERENCE_NAME} (written by pretraining) or, for a directory "
                             f"saved before, in {Path(checkpoint).parent / _RUN_CONFIG}; pass max_len= (CLI: "
                             "--max-len) with the context the model was pretrained with")
    elif not isinstance(max_len, (int, np.integer)) or max_len < 2:
        raise InputError(f"max_len must be an integer >= 2, got {max_len!r}")
    else:
        max_len_from = "argument"
    data, kind = _with_x_kind(adata, source)
    tokens = tokenize_dataset(data, table, tokenizer=tokenizer, max_len=int(max_len), n_bins=config.embedding.n_bins,
                              source=source)
    # the tokens of a cell shorter than max_len do not depend on max_len: report the length used
    tokens.max_len = int(min(max_len, max(int(np.diff(tokens.batch.offsets).max()), 1)))
    tokens.max_len_from = max_len_from
    return tokens, kind


def embed(adata, checkpoint: str | os.PathLike, *, key_added: str | None = None, layer: str | None = None,
          copy: bool = False, vocabulary: str | os.PathLike | None = None, key: str | None = None,
          max_len: int | None = None, batch_size: int = 64, pooling: str = "auto", device=None,
          backend: str = "auto", progress: bool = True, init: str = "pretrained", seed: int = 0):
    """Embed every cell of ``adata`` with a pretrained model (scanpy's tool conventions:
    ``key_added``, ``layer``, ``copy``).

    Parameters
    ----------
    adata
        AnnData (n_cells, n_genes); see :func:`tokenize_for_model` for what X must hold. Genes by
        Ensembl id or symbol: var ``gene_id`` / ``gene_name``, CELLxGENE's ``feature_id`` /
        ``feature_name``, or the var names.
    checkpoint
        A model directory (``results/pretrain/<model>/model``).
    key_added
        obsm key; default ``X_cellmamba_<recipe>`` (:func:`cellmamba.keys.obsm_embedding`).
    layer
        Read raw counts from ``adata.layers[layer]`` instead of X (non-negative integers).
    copy
        Embed a copy of ``adata`` and return it; ``adata`` is left as it is.
    vocabulary
        Gene table in token order (gene_stats.tsv of the pretraining corpus) when the model
        directory has no vocabulary.tsv.
    key
        The earlier name of ``key_added`` (either, not both).
    max_len
        Tokens per cell (binned: CLS included); default the model's training context
        (:func:`training_context`; an error when the directory does not say it).
    batch_size
        Cells per forward pass.
    pooling
        "auto" (the model's inference.json ``pooling``; for a directory without it binned:
        "cls", rank: "mean"), "cls", "mean" or "last"; "cls" and "last" of a
        bidirectional model merged at the end of the stack read each direction where it has
        seen the whole cell (:func:`cellmamba.models.heads.pool_cells`).
    device
        torch device; default CUDA when available, else CPU.
    backend
        SSM kernels: "auto" (mamba_ssm's kernels on CUDA when installed), "torch", "cuda".
    progress
        Show a tqdm progress bar.
    init
        "pretrained" (the model's weights) or "scratch": the same architecture (config.json)
        randomly initialised after :func:`cellmamba._util.seed_all` of ``seed``, the weights file
        not read; the no-pretraining control (``<model>_scratch``) of a zero-shot embedding.
    seed
        Seed of the scratch initialisation (not used with ``init="pretrained"``).

    Returns
    -------
    With ``copy``: the embedded copy (an AnnData). Otherwise the float32 (n_cells, d_model)
    embedding, also written to ``adata.obsm[key_added]`` (scanpy's tools return None there; the
    array is returned for scripts that use it). What was done is recorded in
    ``uns["cellmamba"]["embeddings"][key_added]`` (checkpoint, recipe, pooling, tokenizer, max_len,
    max_len_from, value_source, x_kind, layer, n_genes_used, n_genes_unmapped, vocabulary, device,
    init and, for a scratch control, seed).
    """
    from ._version import __version__
    from .models import CellModel
    from .models.model import check_init
    from .tasks.finetune import FinetuneConfig, collator_for, embed_cells, pick_device, resolve_pooling
    from .tasks.tokens import TokenCells

    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_init(init, where="embed")
    if key is not None and key_added is not None and key != key_added:
        raise InputError(f"embed: key={key!r} and key_added={key_added!r}; pass key_added only")
    checkpoint = Path(checkpoint)
    config = _config(checkpoint)
    recipe = model_recipe(config)
    key = key_added or key or obsm_embedding(recipe)
    if copy:
        adata = adata.copy()
    if pooling not in ("auto", "cls", "mean", "last"):
        raise InputError(f"pooling must be 'auto', 'cls', 'mean' or 'last', got {pooling!r}")
    settings = read_inference_settings(checkpoint, config=config)
    if pooling == "auto" and settings is not None:
        pooling = settings["pooling"]
    pooling = resolve_pooling(FinetuneConfig(pooling=pooling), config.embedding.kind)
    uns = adata.uns.get(UNS, {})
    if not isinstance(uns, dict):
        raise InputError(f"adata.uns['{UNS}'] is a {type(uns).__name__}; expected a dict")
    tokens, kind = tokenize_for_model(_from_layer(adata, layer) if layer is not None else adata, checkpoint,
                                      vocabulary=vocabulary, max_len=max_len,
                                      source=f"adata.layers[{layer!r}]" if layer is not None else "adata")
    if init == "scratch":
        from ._util import seed_all

        seed_all(int(seed))
        model = CellModel.scratch_like(checkpoint, backend=backend)
    else:
        model = CellModel.from_pretrained(checkpoint, backend=backend)
    device = pick_device(device)
    emb, _ = embed_cells(model, TokenCells(tokens), collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=0),
                         pooling=pooling, batch_size=int(batch_size), device=device, progress=progress)
    adata.obsm[key] = emb
    record = {"checkpoint": str(checkpoint.resolve()), "recipe": recipe, "pooling": pooling,
              "tokenizer": tokens.tokenizer, "max_len": tokens.max_len, "max_len_from": tokens.max_len_from,
              "value_source": tokens.value_source, "x_kind": kind, "layer": layer if layer is not None else "X",
              "n_genes_used": tokens.n_genes_used, "n_genes_unmapped": tokens.n_genes_unmapped,
              "vocabulary": str(Path(vocabulary).resolve()) if vocabulary is not None
              else str((checkpoint / VOCABULARY_NAME).resolve()),
              "device": str(device), "cellmamba_version": __version__, "init": init,
              **({"seed": int(seed)} if init == "scratch" else {})}
    adata.uns.setdefault(UNS, {}).setdefault("embeddings", {})[key] = record
    log.info("embedded %d cells with %s (%s, %s pooling%s) into obsm[%r]", emb.shape[0], checkpoint, recipe, pooling,
             f", scratch init seed {int(seed)}" if init == "scratch" else "", key)
    return adata if copy else emb


def _from_layer(adata, layer: str):
    """A light AnnData whose X is ``adata.layers[layer]`` read as raw counts (var shared)."""
    import anndata as ad

    if layer not in adata.layers:
        raise InputError(f"embed: layer {layer!r} is not in adata.layers (it has {sorted(adata.layers)})")
    X = adata.layers[layer]
    if not _is_integer_valued(X):
        raise InputError(f"embed: adata.layers[{layer!r}] does not hold raw counts (non-negative integers); "
                         "pass the layer of counts, or layer=None to read X")
    return ad.AnnData(X=X, var=adata.var, uns={UNS: {UNS_X_KIND: "counts"}})


def checkpoint_info(checkpoint: str | os.PathLike) -> dict:
    """A summary of a model directory, read from config.json and the safetensors header
    (the weights are not loaded): recipe, tokenizer, backbone, sizes, parameter counts, heads,
    vocabulary, training context (and the file it was read from: inference.json, or the run's
    pretrain_config.json for a directory saved before)."""
    from .models.checkpoint import parameter_counts
    from .vocab import N_SPECIAL

    checkpoint = Path(checkpoint)
    config = _config(checkpoint)
    counts = parameter_counts(checkpoint)
    emb, bb = config.embedding, config.backbone
    context, context_from = _training_context(checkpoint, config=config)
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
        "context_length": context, "context_length_from": context_from,
    }

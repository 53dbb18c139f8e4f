"""Pretraining of one model on a token corpus: the corpus, the model, the objective, the loader
and the loop wired together. The workflow's `pretrain` rule calls :func:`run_pretraining`
through ``python -m cellmamba pretrain`` (under torchrun for several GPUs).

A Transformer peer (``backbone="transformer"``) is built with the same d_model and depth as the
recipe's Mamba backbone (``match_backbone``) and a parameter count within 10%
(:func:`~cellmamba.models.same_size_transformer`), and trains with the recipe's objective.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from .._util import dataclass_from_dict, seed_all
from ..models.checkpoint import INFERENCE_FORMAT, INFERENCE_NAME, INFERENCE_VERSION, VOCABULARY_NAME
from ..errors import InputError
from ..io import atomic_path, sha256_file
from ..keys import VAR_FEATURE_ID, VAR_FEATURE_NAME
from ..vocab import N_SPECIAL, Vocabulary
from .checkpoint import list_checkpoints
from .data import (DataConfig, MaskedGeneCollateConfig, MaskedGeneCollator, MaskedValueCollateConfig,
                   MaskedValueCollator, NextTokenCollator, TokenDataset, build_dataloader)
from .data_collate import TokenBudget
from .config import TrainConfig, check_optim
from .loop import train
from .objectives import build_objective

__all__ = ["PretrainConfig", "RECIPE_TOKENIZER", "RECIPE_KEYS", "WORKFLOW_KEYS", "RESUMABLE_CHANGES",
           "build_pretrain_model", "inference_settings", "run_pretraining"]

log = logging.getLogger(__name__)

#: the tokenization each census-pretrained recipe reads
RECIPE_TOKENIZER = {"genemamba": "rank", "scmamba2": "binned"}
#: PretrainConfig fields of one recipe's objective only; the other recipe's job leaves them at their defaults
RECIPE_KEYS = {"genemamba": ("lm", "pathway_weight", "pathway_temperature"), "scmamba2": ("zeros_ratio",)}
#: keys of the workflow's ``pretrain`` sub-tree that the workflow reads itself (which jobs, which GMT files)
WORKFLOW_KEYS = ("recipes", "transformer_peers", "unidirectional_ablations", "gene_sets")
#: how each recipe's bidirectional backbone merges its two directions, as published: SC-MAMBA2 sums
#: them in every layer (its section 4.2: the combined sequence goes to the next layer), GeneMamba
#: gates them in every block (its Fig. 2). GeneMamba's next-token objective needs each direction's
#: own causal states, so with lm="next_token" the stack runs per direction and the gate merges once
#: at the end (models.BackboneConfig: merge, merge_every)
RECIPE_MERGE = {"scmamba2": ("sum", "layer"), "genemamba": ("gate", "layer")}
NEXT_TOKEN_MERGE = ("gate", "stack")
#: SC-MAMBA2 maps the binned value through a continuous function: scGPT's continuous value
#: encoder form (models.embeddings, "continuous_norm")
RECIPE_VALUE_ENCODING = {"scmamba2": "continuous_norm"}
#: batch lengths rounded up to a multiple, by backbone: PyTorch's cuDNN attention builds a plan for
#: every new sequence length, so a Transformer on length-bucketed batches (a new length almost every
#: step) ran at 0.32 M real tokens/s through run_pretraining against 0.80 M with lengths in steps
#: of 64; the Mamba kernels plan nothing per length and pay for the extra padding (0.96 -> 0.89 M)
#: (benchmarks/README.md "End to end", H200 2026-12-04)
PAD_TO_MULTIPLE = {"transformer": 64}
#: learned positions of a Transformer peer on rank tokens (Geneformer: 2,048): enough for the longest
#: sequence fine-tuning feeds (perturbation predicts every Norman gene: 5,045 + <cls>); positions past
#: the pretraining context are learned in fine-tuning only
POSITION_SLOTS = 8192


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run (a recipe, or the Transformer peer of one)."""

    recipe: str = "scmamba2"            # "genemamba" | "scmamba2": objective and tokenization
    backbone: str = "bimamba_mamba2"    # bimamba_mamba2 | bimamba_mamba1 | mamba2 | transformer
    match_backbone: str = "bimamba_mamba2"  # transformer only: the Mamba backbone it must match in size
    d_model: int = 512                  # hidden width
    n_layers: int = 6                   # depth
    context_length: int = 2048          # tokens per cell seen by the model (longer cells are cropped)
    d_state: int | None = None          # SSM state size; None = mamba_ssm's default (Mamba2 128, Mamba1 16)
    merge: str | None = None            # bidirectional: "mean" | "sum" | "gate"; None = the recipe's (RECIPE_MERGE)
    merge_every: str | None = None      # bidirectional: "layer" | "stack"; None = the recipe's (next_token: stack)
    value_encoding: str | None = None   # binned: "categorical" | "continuous" | "continuous_norm"; None = the recipe's
    lm: str = "masked_gene"             # genemamba: "masked_gene" (shared with its Transformer peer) | "next_token"
    mask_ratio: float = 0.15            # masked values (scmamba2) or masked genes (genemamba masked_gene)
    zeros_ratio: float = 0.0            # scmamba2: unexpressed measured genes added per expressed gene
    pathway_weight: float = 0.1         # genemamba: weight of the pathway-aware contrastive loss (0 = off)
    pathway_temperature: float = 0.1    # genemamba: its InfoNCE temperature
    batch_size: int = 32                # cells per step per GPU
    max_steps: int = 1000               # optimizer steps
    lr: float = 3e-4                    # peak learning rate
    warmup_steps: int = 100             # linear warm-up steps, then cosine decay
    weight_decay: float = 0.01          # AdamW weight decay (not on norms, biases, A_log, D)
    grad_clip: float = 1.0              # gradient norm clip
    grad_accum: int = 1                 # micro-batches per optimizer step
    checkpoint_every: int = 500         # steps between checkpoints (one is always written at the end)
    log_every: int = 10                 # steps between metric rows
    seed: int = 0                       # model init, data order, masking
    num_workers: int = 0                # DataLoader worker processes
    backend: str = "auto"               # SSM kernels: auto | torch | cuda
    recompute: bool = False             # Mamba2 on CUDA: recompute activations in the backward pass (long contexts)
    pack: bool = False                  # several cells per row, no computation on padding (models.packing; not Mamba1)
    pad_to_multiple: int | None = None  # batch lengths rounded up to a multiple; None = the backbone's (PAD_TO_MULTIPLE)
    max_tokens_per_pass: int | None = None  # a step's cells in passes of at most this many padded tokens (data_collate.TokenBudget)

    def __post_init__(self):
        check_optim(self)
        if self.pad_to_multiple is not None and (isinstance(self.pad_to_multiple, bool)
                                                 or not isinstance(self.pad_to_multiple, int) or self.pad_to_multiple < 1):
            raise InputError(f"PretrainConfig: pad_to_multiple must be an integer >= 1 or null, got {self.pad_to_multiple!r}")
        budget = self.max_tokens_per_pass
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < self.context_length:
                raise InputError(f"PretrainConfig: max_tokens_per_pass must be null or an integer >= context_length "
                                 f"({self.context_length}, so that a whole cell fits in a pass), got {budget!r}")
            if self.grad_accum != 1:
                raise InputError(f"PretrainConfig: max_tokens_per_pass ({budget}) sizes the passes of a step itself; "
                                 f"grad_accum must be 1 (got {self.grad_accum}), and models.<recipe>.micro_batch_size "
                                 "null")
        if self.recipe not in RECIPE_TOKENIZER:
            raise InputError(f"PretrainConfig: recipe must be one of {sorted(RECIPE_TOKENIZER)}, got {self.recipe!r}")
        if self.backbone == "transformer" and self.recipe == "genemamba" and self.lm != "masked_gene":
            raise InputError("PretrainConfig: a Transformer peer has no direction-wise causal states, so genemamba's "
                             f"lm={self.lm!r} cannot be shared with it; use lm='masked_gene'")
        if self.recipe == "genemamba" and self.lm == "next_token" and self.merge_every == "layer":
            raise InputError("PretrainConfig: genemamba's lm='next_token' predicts from each direction's own causal "
                             "states, which a per-layer merge mixes (a leak): merge_every='layer' cannot go with it "
                             "(config: pretrain.genemamba_lm and models.genemamba.merge_every; use 'stack')")

    @classmethod
    def from_workflow(cls, model: Mapping[str, Any], pretrain: Mapping[str, Any], *, name: str) -> "PretrainConfig":
        """The config of the workflow's pretraining job ``name`` ("<recipe>", "<recipe>_transformer"
        for its same-size peer, or "<recipe>_u" for its unidirectional ablation: GeneMamba_U, the
        recipe's Mamba with its backward direction removed) from the ``models.<recipe>`` and
        ``pretrain`` sub-trees of the workflow config, passed whole.

        The keys are PretrainConfig's fields, except: ``models.<recipe>.backbone`` is also the
        peer's ``match_backbone``; ``tokenizer`` must be the recipe's (:data:`RECIPE_TOKENIZER`);
        ``micro_batch_size`` cells per pass reach ``pretrain.batch_size`` cells per optimizer
        step by accumulation; ``pretrain.genemamba_lm`` is genemamba's ``lm``; the keys of the
        other recipe's objective (:data:`RECIPE_KEYS`) and the workflow's own
        (:data:`WORKFLOW_KEYS`) are left out. Unknown keys are an InputError.
        """
        recipe, variant = split_model_name(name)
        if recipe not in RECIPE_TOKENIZER:
            raise InputError(f"pretraining job {name!r}: recipe must be one of {sorted(RECIPE_TOKENIZER)}")
        model, pretrain = dict(model), {k: v for k, v in pretrain.items() if k not in WORKFLOW_KEYS}
        tokenizer = model.pop("tokenizer", RECIPE_TOKENIZER[recipe])
        if tokenizer != RECIPE_TOKENIZER[recipe]:
            raise InputError(f"config: models.{recipe}.tokenizer is {tokenizer!r}, but the {recipe} recipe reads "
                             f"{RECIPE_TOKENIZER[recipe]!r} tokens; set it to {RECIPE_TOKENIZER[recipe]!r}")
        if "genemamba_lm" in pretrain:
            pretrain["lm"] = pretrain.pop("genemamba_lm")
        for other, keys in RECIPE_KEYS.items():
            if other != recipe:
                for key in keys:
                    pretrain.pop(key, None)
        micro = model.pop("micro_batch_size", None)
        if micro is not None and model.get("max_tokens_per_pass") is not None:
            raise InputError(f"config: models.{recipe}.micro_batch_size ({micro}) and max_tokens_per_pass "
                             f"({model['max_tokens_per_pass']}) both size the passes of a step; set one, the other null")
        if micro is not None:  # the same cells per optimizer step, in micro-batches that fit the GPU
            batch, accum = pretrain.get("batch_size", cls.batch_size), pretrain.get("grad_accum", cls.grad_accum)
            if not isinstance(micro, int) or micro < 1 or batch % micro:
                raise InputError(f"config: models.{recipe}.micro_batch_size ({micro}) must divide "
                                 f"pretrain.batch_size ({batch})")
            pretrain.update(batch_size=micro, grad_accum=accum * (batch // micro))
        backbone = model.get("backbone", cls.backbone)
        if variant == UNIDIRECTIONAL:  # GeneMamba_U: the same Mamba, forward direction only
            if not backbone.startswith("bimamba_"):
                raise InputError(f"pretraining job {name!r}: the unidirectional ablation needs a bidirectional "
                                 f"models.{recipe}.backbone (bimamba_mamba2 or bimamba_mamba1), got {backbone!r}")
            backbone = backbone.removeprefix("bimamba_")
        model.update(match_backbone=backbone, backbone="transformer" if variant == TRANSFORMER else backbone)
        clash = sorted(set(model) & set(pretrain))
        if clash:
            raise InputError(f"config: {clash} set in both models.{recipe} and pretrain")
        return dataclass_from_dict(cls, {**pretrain, **model, "recipe": recipe},
                                   where=f"config: models.{recipe} + pretrain")

    def to_train_config(self) -> TrainConfig:
        """The loop's settings: ``max_steps`` steps of ``batch_size`` cells per GPU (x ``grad_accum``)."""
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           max_steps=self.max_steps, grad_clip=self.grad_clip, grad_accum=self.grad_accum,
                           batch_size=self.batch_size, log_every=self.log_every,
                           checkpoint_every=self.checkpoint_every, seed=self.seed)

    @property
    def resolved_merge(self) -> tuple[str, str]:
        """(merge, merge_every) of the bidirectional backbone: the settings, else the recipe's."""
        default = (NEXT_TOKEN_MERGE if self.recipe == "genemamba" and self.lm == "next_token"
                   else RECIPE_MERGE[self.recipe])
        return self.merge or default[0], self.merge_every or default[1]

    @property
    def resolved_pad_to_multiple(self) -> int:
        """Batch lengths are rounded up to this multiple: the setting, else :data:`PAD_TO_MULTIPLE`'s."""
        return self.pad_to_multiple or PAD_TO_MULTIPLE.get(self.backbone, 1)

    @property
    def resolved_value_encoding(self) -> str:
        return self.value_encoding or RECIPE_VALUE_ENCODING.get(self.recipe, "categorical")


def read_vocabulary(gene_stats: str | os.PathLike) -> Vocabulary:
    """The vocabulary (token order) from gene_stats.tsv or the census genes.tsv."""
    table = pd.read_csv(gene_stats, sep="\t")
    for key in (VAR_FEATURE_ID, VAR_FEATURE_NAME):
        if key not in table:
            raise InputError(f"{gene_stats}: missing column {key!r} (expected a gene table in vocabulary order)")
    return Vocabulary.from_var(table, source=str(gene_stats))


def build_pretrain_model(config: PretrainConfig, *, n_genes: int, n_bins: int = 51):
    """The CellModel of one pretraining run: embedding for the recipe's tokens, backbone, heads."""
    from ..models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig, same_size_transformer
    from ..models.embeddings import positions_for

    tokenizer = RECIPE_TOKENIZER[config.recipe]
    vocab_size = N_SPECIAL + n_genes
    positions = positions_for(tokenizer, config.backbone)
    embedding = EmbeddingConfig(kind=tokenizer, vocab_size=vocab_size, n_bins=n_bins,
                                value_encoding=config.resolved_value_encoding, positions=positions,
                                max_len=position_slots(config) or 0)
    mamba = config.match_backbone if config.backbone == "transformer" else config.backbone
    d_state = config.d_state if config.d_state is not None else (16 if mamba.endswith("mamba1") else 128)
    merge, merge_every = config.resolved_merge
    mamba_config = BackboneConfig(arch=mamba, d_model=config.d_model, n_layers=config.n_layers,
                                  backend=config.backend, d_state=d_state, recompute=config.recompute,
                                  merge=merge, merge_every=merge_every)
    backbone = same_size_transformer(mamba_config) if config.backbone == "transformer" else mamba_config
    if config.recipe == "scmamba2":
        heads = {"value": HeadConfig(kind="value_regression")}
    else:
        heads = {"gene": HeadConfig(kind="token_classification", n_out=vocab_size)}
    return CellModel(CellModelConfig(embedding=embedding, backbone=backbone, heads=heads))


#: the most loader worker processes a pretraining process starts (collation of a batch of 32 cells
#: takes a few milliseconds per worker; more workers only hold more memory)
MAX_LOADER_WORKERS = 8


def loader_workers(cpus: int | None, gpus: int = 1) -> int:
    """Loader worker processes per training process of a job with ``cpus`` cores and ``gpus``
    processes (one per GPU): each process keeps one core for its own loop, the rest collate the
    next batches in the background (at most :data:`MAX_LOADER_WORKERS`); 0 (collation in the
    loop) when there is no core to spare or ``cpus`` is unknown."""
    if cpus is None:
        return 0
    per_process = int(cpus) // max(int(gpus), 1)
    return max(0, min(MAX_LOADER_WORKERS, per_process - 1))


#: model-name suffixes of the pretraining jobs: the same-size Transformer peer, the unidirectional ablation
TRANSFORMER, UNIDIRECTIONAL = "_transformer", "_u"


def split_model_name(name: str) -> tuple[str, str]:
    """A pretrained model's name -> (recipe, variant): "genemamba_u" -> ("genemamba", "_u"),
    "scmamba2_transformer" -> ("scmamba2", "_transformer"), "genemamba" -> ("genemamba", "")."""
    for suffix in (TRANSFORMER, UNIDIRECTIONAL):
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def position_slots(config: PretrainConfig) -> int | None:
    """The number of learned positions of the run's model (the longest input it reads), or None
    when it has none (Mamba, and the Transformer peer of binned tokens)."""
    from ..models.embeddings import positions_for

    if positions_for(RECIPE_TOKENIZER[config.recipe], config.backbone) != "learned":
        return None
    return max(POSITION_SLOTS, config.context_length)


def _collator(config: PretrainConfig, *, n_genes: int, rank: int):
    common = dict(seed=config.seed, rank=rank, pack=config.pack, pad_to_multiple=config.resolved_pad_to_multiple,
                  max_padded=position_slots(config))
    if config.recipe == "scmamba2":
        return MaskedValueCollator(MaskedValueCollateConfig(mask_ratio=config.mask_ratio, zeros_ratio=config.zeros_ratio),
                                   **common)
    if config.lm == "masked_gene":
        return MaskedGeneCollator(MaskedGeneCollateConfig(mask_ratio=config.mask_ratio), n_genes=n_genes, **common)
    return NextTokenCollator(**common)


def _objective(config: PretrainConfig, *, vocabulary: Vocabulary | None, gene_sets):
    if config.recipe == "scmamba2":
        return build_objective("scmamba2")
    return build_objective("genemamba", {"lm": config.lm, "pathway_weight": config.pathway_weight,
                                         "pathway_temperature": config.pathway_temperature},
                           vocabulary=vocabulary, gene_sets=list(gene_sets) if config.pathway_weight > 0 else None)


def inference_settings(config: PretrainConfig, corpus_manifest: dict) -> dict:
    """The content of ``model/inference.json``: what embedding / tokenizing new data needs that
    config.json does not say, so the model directory works wherever it is copied.

    ``context_length`` (tokens per cell in pretraining: embed's default ``max_len``),
    ``tokenizer`` and ``tokenizer_settings`` (the corpus manifest's), ``pooling`` (the recipe's
    cell embedding: binned "cls", rank "mean"), ``recipe``, ``backbone``, ``vocab_hash``, ``n_genes``.
    """
    tokenizer = corpus_manifest.get("tokenizer")
    return {"format": INFERENCE_FORMAT, "format_version": INFERENCE_VERSION,
            "context_length": config.context_length, "tokenizer": tokenizer,
            "tokenizer_settings": corpus_manifest.get("settings", {}),
            "pooling": "cls" if tokenizer == "binned" else "mean", "recipe": config.recipe,
            "backbone": config.backbone, "vocab_hash": corpus_manifest.get("vocab_hash"),
            "n_genes": corpus_manifest.get("n_genes")}


#: PretrainConfig keys a resume may change: max_steps (raised to extend a finished run; the
#: learning-rate schedule continues over the new length), never below the newest checkpoint's step
RESUMABLE_CHANGES = ("max_steps",)


def _guard_resume(out_dir: Path, config: PretrainConfig, corpus, *, write: bool) -> None:
    """Refuse to resume checkpoints made for another corpus or config (a rerun after new inputs);
    a raised ``max_steps`` extends the run from its newest checkpoint."""
    record = {"config": dataclasses.asdict(config), "corpus_sha256": sha256_file(corpus)}
    path, ckpts = out_dir / "pretrain_config.json", out_dir / "checkpoints"
    found = list_checkpoints(ckpts)
    if path.exists() and found:
        old = json.loads(path.read_text())
        old_config = old.get("config", {})
        changed = sorted(k for k in record["config"] if old_config.get(k) != record["config"][k])
        what = (["corpus"] if old.get("corpus_sha256") != record["corpus_sha256"] else []) + changed
        refused = [k for k in what if k not in RESUMABLE_CHANGES]
        if refused:
            details = ", ".join(f"{k} ({old_config.get(k)!r} -> {record['config'][k]!r})" if k != "corpus" else k
                                for k in refused)
            raise InputError(f"{ckpts}: its checkpoints were made with another {details}; resuming them would "
                             f"mix two runs. Delete {ckpts} to start over")
        newest = int(found[-1].name.split("_")[1])
        if config.max_steps < newest:
            raise InputError(f"{ckpts}: max_steps is {config.max_steps}, but the newest checkpoint is at step "
                             f"{newest} (max_steps {old_config.get('max_steps')!r} when written); a run cannot be "
                             f"shortened below a checkpoint. Set max_steps >= {newest}, or delete {ckpts} to start "
                             "over")
        if "max_steps" in what:
            log.info("max_steps changed from %s to %d: the run continues from its newest checkpoint (step %d), "
                     "with the learning-rate schedule over %d steps", old_config.get("max_steps"), config.max_steps,
                     newest, config.max_steps)
    if write:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))


def run_pretraining(corpus: str | os.PathLike, out_dir: str | os.PathLike, *, config: PretrainConfig,
                    gene_stats: str | os.PathLike | None = None, gene_sets=(), device=None):
    """Pretrain one model on a token corpus; resumes from ``out_dir``'s latest good checkpoint.

    Parameters
    ----------
    corpus
        The corpus manifest (results/tokens/{tokenizer}/manifest.json) of the recipe's tokenizer.
    out_dir
        Receives checkpoints/, model/ (safetensors + config.json + inference.json [+ vocabulary.tsv]:
        everything inference reads, :func:`inference_settings`), metrics.csv, loss_curve.png,
        provenance.json and pretrain_config.json.
    config
        :class:`PretrainConfig`.
    gene_stats
        The corpus' gene table in vocabulary order (results/qc/gene_stats.tsv): checked against
        the corpus (vocab_hash) and copied to ``model/vocabulary.tsv``, so new data can be
        tokenized for the model (:func:`cellmamba.embed`); genemamba also maps pathway gene
        symbols to tokens with it.
    gene_sets
        genemamba: GMT files of the pathway-aware contrastive loss.

    Returns
    -------
    The loop's final :class:`~cellmamba.train.loop.TrainState`.

    Raises
    ------
    CorruptFileError
        A token shard that does not match its manifest, naming the file and the expected and
        found size or digest: at open (sizes and sampled blocks of every shard, cheap at any
        corpus size) or from the full sha256 of every shard, which runs once per run in the
        background, each rank checking its share (shard i on rank i % world_size) while training
        goes on; the run stops at the next step after a failure and waits for the check before
        it exports the model, so a damaged corpus never yields a model
        (:class:`~cellmamba.tokenize.ShardVerifier`).
    """
    seed_all(config.seed)  # model init included: every rank builds the same model
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dataset = TokenDataset(corpus, max_len=config.context_length, seed=config.seed, verify="sample")
    manifest = json.loads(Path(corpus).read_text())
    expected = RECIPE_TOKENIZER[config.recipe]
    if manifest.get("tokenizer") != expected:
        raise InputError(f"{corpus}: a {manifest.get('tokenizer')!r} corpus, but recipe {config.recipe!r} reads "
                         f"{expected!r} tokens")
    vocabulary = None
    if config.recipe == "genemamba" and config.pathway_weight > 0 and (gene_stats is None or not gene_sets):
        raise InputError("genemamba with pathway_weight > 0 needs gene_stats= and gene_sets= (GMT files)")
    if gene_stats is not None:
        vocabulary = read_vocabulary(gene_stats)
        if vocabulary.hash != manifest.get("vocab_hash"):
            raise InputError(f"{gene_stats}: its genes are not the vocabulary of {corpus} (vocab_hash differs)")
    n_bins = int(manifest.get("settings", {}).get("n_bins", 51))
    model = build_pretrain_model(config, n_genes=dataset.n_genes, n_bins=n_bins)
    objective = _objective(config, vocabulary=vocabulary, gene_sets=gene_sets)
    collator = _collator(config, n_genes=dataset.n_genes, rank=rank)
    if config.max_tokens_per_pass is not None:  # a step's batch_size cells in passes that fit the budget
        collator = TokenBudget(collator, config.max_tokens_per_pass)
    # page-locked batches on a GPU: their host-to-device copies run asynchronously (to_device)
    pin = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    loader = build_dataloader(dataset, collator,
                              DataConfig(max_len=config.context_length, batch_size=config.batch_size,
                                         seed=config.seed, num_workers=config.num_workers, pin_memory=pin),
                              rank=rank, world_size=world_size)
    train_config = config.to_train_config()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _guard_resume(out_dir, config, corpus, write=rank == 0)
    log.info("pretraining %s (%s backbone) on %s: %d cells, %d genes", config.recipe, config.backbone, corpus,
             len(dataset), dataset.n_genes)
    verifier = dataset.corpus.verify_in_background(rank=rank, world_size=world_size)
    # the gene table and the inference settings ship inside the model directory (one atomic
    # export), so new data can be tokenized for the model wherever the directory is copied
    files = {INFERENCE_NAME: (json.dumps(inference_settings(config, manifest), indent=1) + "\n").encode()}
    if gene_stats is not None:
        files[VOCABULARY_NAME] = gene_stats
    return train(model, objective, loader, train_config, out_dir=out_dir, device=device, model_files=files,
                 data_check=lambda final: verifier.check(wait=final))

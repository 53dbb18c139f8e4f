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

from ..io import atomic_path, read_h5ad_checked, write_h5ad_atomic
from ..keys import OBSM_EMBEDDING, UNS
from ..runlog import provenance
from .annotate import run_annotation
from .finetune import FinetuneConfig
from .integrate import run_integration
from .tokens import check_gene_overlap, gene_weights, select_genes, vocabulary_index

__all__ = ["finetune_annotation_files", "finetune_integration_files", "write_embedding",
           "finetune_perturbation_files", "train_multiomics_files"]

log = logging.getLogger(__name__)


def _read_aliases(aliases):
    from ..genes import read_aliases

    return None if aliases is None else read_aliases(aliases)


def _check_overlap(adata, vocab: pd.DataFrame, dataset, gene_overlap: dict | None, aliases=None) -> None:
    """evaluation.gene_overlap: fail / warn when too little of the dataset's expression is in vocabulary genes."""
    index = vocabulary_index(adata.var, vocab, source=str(dataset), aliases=aliases)
    check_gene_overlap(index, weights=gene_weights(adata), source=f"dataset {Path(dataset).stem!r} ({dataset})",
                       **dict(gene_overlap or {}))


def _prepare(dataset: str | os.PathLike, vocabulary: str | os.PathLike, config: FinetuneConfig, genes: dict | None,
             gene_overlap: dict | None, aliases):
    adata = read_h5ad_checked(dataset)
    vocab = pd.read_csv(vocabulary, sep="\t")
    _check_overlap(adata, vocab, dataset, gene_overlap, aliases)
    genes = genes or {}
    mask = select_genes(adata, n_hvg=genes.get("n_hvg"), min_counts=genes.get("min_counts", 0), source=str(dataset))
    # scGPT: max_seq_len = n_genes + 1 (CLS); never longer than the selected genes need
    max_len = min(config.max_len, int(mask.sum()) + 1)
    return adata, vocab, mask, dataclasses.replace(config, max_len=max_len)


def _method_name(model_dir, config) -> str:
    """The table's name of a run: the pretrained model's (its directory's parent), with
    ``_scratch`` for the randomly initialised control."""
    return Path(model_dir).parent.name + ("_scratch" if config.init == "scratch" else "")


def _run_info(path: Path, model_dir, config: FinetuneConfig, genes_used: int, extra: dict) -> None:
    from ..models.checkpoint import parameter_counts

    # parameter counts from the weights file's header: no model is built or loaded for them
    counts = parameter_counts(model_dir)
    info = provenance({"model": str(model_dir), "pretrained_params": sum(counts.values()),
                       "pretrained_params_backbone": counts.get("backbone", 0),
                       "n_genes_selected": genes_used, "config": dataclasses.asdict(config), **extra})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=1, default=str) + "\n")


def finetune_annotation_files(dataset, model_dir, vocabulary, *, config: FinetuneConfig, predictions,
                              train_dir, genes: dict | None = None, gene_overlap: dict | None = None,
                              aliases: str | os.PathLike | None = None) -> None:
    """Rule finetune_annotation: predictions CSV (cell, split, cell_type, predicted) + train dir.

    ``gene_overlap``: ``min_fraction`` / ``warn_fraction`` of :func:`~cellmamba.tasks.check_gene_overlap`
    (config ``evaluation.gene_overlap``; default its defaults); ``aliases``: the legacy-symbol alias
    table (resources/genes/human_gene_aliases_ncbi2022.tsv.gz; None: none)."""
    aliases = _read_aliases(aliases)
    adata, vocab, mask, config = _prepare(dataset, vocabulary, config, genes, gene_overlap, aliases)
    with atomic_path(train_dir) as tmp:
        table = run_annotation(adata, model_dir, vocab, config=config, out_dir=tmp, genes=mask, aliases=aliases)
        _run_info(tmp / "run.json", model_dir, config, int(mask.sum()), {"dataset": str(dataset)})
    with atomic_path(predictions) as tmp:
        table.to_csv(tmp, index=False)


def write_embedding(adata, emb: np.ndarray, path, *, info: dict) -> None:
    """An h5ad with ``adata``'s obs and obs_names, obsm['X_emb'] = emb, no X (n_cells x 0)."""
    import anndata as ad

    out = ad.AnnData(obs=adata.obs.copy(), obsm={OBSM_EMBEDDING: np.asarray(emb, dtype=np.float32)})
    out.uns[UNS] = json.loads(json.dumps(info, default=str))
    write_h5ad_atomic(out, path)


def finetune_integration_files(dataset, model_dir, vocabulary, *, config: FinetuneConfig, embedding,
                               train_dir, genes: dict | None = None, gene_overlap: dict | None = None,
                               aliases: str | os.PathLike | None = None) -> None:
    """Rule finetune_integration: embedding h5ad (obsm['X_emb']) + train dir (``gene_overlap``: as
    :func:`finetune_annotation_files`, and ``aliases``)."""
    aliases = _read_aliases(aliases)
    adata, vocab, mask, config = _prepare(dataset, vocabulary, config, genes, gene_overlap, aliases)
    with atomic_path(train_dir) as tmp:
        emb = run_integration(adata, model_dir, vocab, config=config, out_dir=tmp, genes=mask, aliases=aliases)
        _run_info(tmp / "run.json", model_dir, config, int(mask.sum()), {"dataset": str(dataset)})
    write_embedding(adata, emb, embedding, info={"method": _method_name(model_dir, config), "seed": config.seed,
                                                 "n_genes_selected": int(mask.sum()), "genes": genes or {}})


def finetune_perturbation_files(dataset, model_dir, vocabulary, *, split, config, predictions, train_dir,
                                gene_overlap: dict | None = None, aliases: str | os.PathLike | None = None) -> None:
    """Rule finetune_perturbation: profiles h5ad (predicted mean profile of every test condition
    and reverse candidate, obs ``role``) + train dir (``gene_overlap``, ``aliases``: as
    :func:`finetune_annotation_files`).

    The split's ``train`` conditions are the training targets and ``val`` the validation
    targets; ``ctrl`` cells are only ever inputs (SC-MAMBA2 removes ctrl from both lists).
    """
    from ..conditions import prediction_targets
    from ..keys import OBS_ROLE
    from ..datasets.gears_split import read_split
    from ..io import write_profiles
    from .perturb import run_perturbation

    adata = read_h5ad_checked(dataset)
    vocab = pd.read_csv(vocabulary, sep="\t")
    aliases = _read_aliases(aliases)
    _check_overlap(adata, vocab, dataset, gene_overlap, aliases)
    sp_ = read_split(split)
    conditions, roles = prediction_targets(sp_)
    with atomic_path(train_dir) as tmp:
        result = run_perturbation(adata, model_dir, vocab, train_conditions=sp_.train, valid_conditions=sp_.val,
                                  predict_conditions=conditions, config=config, out_dir=tmp, aliases=aliases)
        _run_info(tmp / "run.json", model_dir, config, result.n_genes_used,
                  {"dataset": str(dataset), "split": str(split), "n_genes_unmapped": result.n_genes_unmapped,
                   "unflagged": result.unflagged})
    frame = result.predictions.loc[conditions]
    info = {"method": _method_name(model_dir, config), "seed": config.seed, "n_genes_used": result.n_genes_used,
            "n_genes_unmapped": result.n_genes_unmapped, "unflagged": result.unflagged}
    write_profiles(frame, predictions, obs=pd.DataFrame({OBS_ROLE: roles}, index=frame.index), info=info)


def train_multiomics_files(dataset, positions, *, config, embedding, train_dir, method: str) -> None:
    """Rule train_multiomics: paired-embedding h5ad (both modalities' embeddings of every cell,
    :func:`cellmamba.io.write_paired_embedding`) + train dir (towers, metrics, run.json)."""
    from ..io import write_paired_embedding
    from .multiomics import run_multiomics

    adata = read_h5ad_checked(dataset)
    with atomic_path(train_dir) as tmp:
        result = run_multiomics(adata, config=config, out_dir=tmp, positions=positions)
        info = provenance({"method": method, "dataset": str(dataset), "config": dataclasses.asdict(config),
                           "n_features": result.n_features, "n_patches": result.n_patches,
                           "n_params": result.n_params, "n_unplaced": result.n_unplaced,
                           "train_metrics": result.train_metrics})
        (tmp / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    keep = [c for c in ("cell_type", "batch") if c in adata.obs]
    write_paired_embedding(adata.obs[keep], {m: result.embeddings[m] for m in result.modalities}, embedding,
                           info={"method": method, "seed": config.seed, "arch": config.arch,
                                 "n_params": result.n_params})

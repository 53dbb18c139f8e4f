"""GeneMamba's gene-level analyses of a pretrained rank model (issue 24): gene-gene relationships
from its gene embeddings, and the reconstruction of a cell's gene ranking.

Held-out cells: a sample of an evaluation dataset (``genes.dataset``; every registry dataset's
collections are excluded from the pretraining corpus, config/datasets.yaml ``census_exclusion``),
tokenized with the model's own tokenizer and context (:func:`cellmamba.embedding.tokenize_for_model`).

Gene pairs. Two embeddings per gene: the model's input embedding row (:func:`token_embeddings`)
and its contextual state, the backbone's output at the gene's position averaged over the held-out
cells in which the gene appears (:func:`contextual_embeddings`). The evaluated genes are those of
the model vocabulary that are in a held-out gene set (never used by the pathway loss) and appear
in at least ``min_cells`` sampled cells; pairs of them are labelled by co-membership of a held-out
set, and marked ``trained`` where they share a set the pathway loss trained on (``strict`` pairs
are the others). :func:`build_pair_set` writes them once, the same pairs for every model and
reference; :func:`gene_pair_rows` scores one model, :func:`pair_reference_rows` the references
(co-expression Pearson r in the pretraining corpus, and a seeded random score).

Rank reconstruction. Masked-gene models (``lm="masked_gene"``): every position of a cell is
predicted once while hidden, in ``round(1 / mask_ratio)`` passes, each hiding a seeded random
share of ``mask_ratio`` of the cell's positions (the training distribution), the rest visible.
Next-token models: one pass, position i predicted from the forward state at i - 1 and the
reverse state at i + 1 (log-probabilities summed where both exist; position 0 of a
unidirectional model has no prediction). The predicted gene is the argmax over gene tokens
(special tokens excluded). :func:`predict_positions`; the metrics are in
:mod:`cellmamba.metrics.genes`.

The scratch control ``<model>_scratch`` is the model's architecture from its own config.json,
randomly initialised after seeding with the pretraining seed (:func:`load_gene_model`): the
weights :func:`cellmamba.train.pretrain.build_pretrain_model` draws after the same seeding
(tests/unit/test_gene_analyses.py).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ._util import dataclass_from_dict, seed_all
from .errors import InputError
from .io import atomic_path, read_h5ad_checked
from .vocab import MASK_ID, N_SPECIAL, Vocabulary

__all__ = ["GeneAnalysisConfig", "LMS", "PAIR_COLUMNS", "sample_cells", "held_out_tokens", "load_gene_model",
           "token_embeddings", "contextual_embeddings", "predict_positions", "build_pair_set", "read_pair_set",
           "gene_pair_rows", "pair_reference_rows", "corpus_expression", "reconstruction_scheme",
           "rank_reconstruction_files"]

log = logging.getLogger(__name__)

#: the language-like objectives a genemamba model can have been pretrained with (pretrain.genemamba_lm)
LMS = ("masked_gene", "next_token")
#: columns of the pair set file (results/genes/pairs.tsv.gz)
PAIR_COLUMNS = ("token_a", "token_b", "feature_id_a", "feature_id_b", "gene_a", "gene_b", "held_out", "trained")
#: bins per axis of the reconstruction's density (input rank x reconstructed rank), at most
DENSITY_BINS = 64


@dataclass(frozen=True)
class GeneAnalysisConfig:
    """Settings of the gene analyses (config ``genes:`` less its workflow keys)."""

    n_cells: int = 1000               # held-out cells sampled (contextual states, reconstruction)
    min_cells: int = 1                # a gene enters the pairs when it appears in at least this many sampled cells
    max_genes: int | None = 4000      # at most this many evaluated genes (a seeded subset); None: all
    max_pairs: int | None = 200_000   # at most this many pairs (seeded, stratified by label); None: all
    coexpression_cells: int = 5000    # corpus cells of the co-expression reference (seeded sample)
    top_k: tuple[int, ...] = (10, 50, 100)  # k of the reconstruction's top-k overlaps
    batch_size: int = 32              # cells per forward pass
    seed: int = 0                     # cell, gene and pair samples, the random reference, masking passes
    backend: str = "auto"             # SSM kernels: auto | torch | cuda

    def __post_init__(self):
        def need(ok, what):
            if not ok:
                raise InputError(f"GeneAnalysisConfig: {what}")

        def positive(name, allow_none=False):
            v = getattr(self, name)
            ok = (allow_none and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            need(ok, f"{name} must be an integer >= 1{' or null' if allow_none else ''}, got {v!r}")

        for name in ("n_cells", "min_cells", "coexpression_cells", "batch_size"):
            positive(name)
        for name in ("max_genes", "max_pairs"):
            positive(name, allow_none=True)
        object.__setattr__(self, "top_k", tuple(self.top_k))
        need(self.top_k and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.top_k),
             f"top_k must be a non-empty list of integers >= 1, got {list(self.top_k)!r}")
        need(self.backend in ("auto", "torch", "cuda"), f"backend must be auto, torch or cuda, got {self.backend!r}")

    @classmethod
    def from_dict(cls, data: Mapping | None) -> "GeneAnalysisConfig":
        return dataclass_from_dict(cls, data, where="config: genes")


# ---------------------------------------------------------------- held-out cells and models
def sample_cells(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``min(n, n_total)`` of ``n_total`` cells."""
    if n >= n_total:
        return np.arange(n_total, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 24]).choice(n_total, size=n, replace=False)).astype(np.int64)


def held_out_tokens(dataset: str | os.PathLike, model_dir: str | os.PathLike, *, n_cells: int, seed: int):
    """The tokens ``model_dir``'s model reads for a seeded sample of ``dataset``'s cells.

    Returns
    -------
    :class:`~cellmamba.tasks.tokens.DatasetTokens` of the sampled cells (in dataset order) and
    their obs names (Index).
    """
    from .embedding import tokenize_for_model

    adata = read_h5ad_checked(dataset)
    cells = sample_cells(adata.n_obs, n_cells, seed)
    sub = adata[cells].copy()
    tokens, _ = tokenize_for_model(sub, model_dir, source=str(dataset))
    log.info("%s: %d of %d cells sampled (seed %d), tokenized for %s (max_len %d)", dataset, len(cells),
             adata.n_obs, seed, model_dir, tokens.max_len)
    return tokens, sub.obs_names


def load_gene_model(model_dir: str | os.PathLike, *, init: str = "pretrained", seed: int = 0,
                    backend: str = "auto"):
    """The model of ``model_dir`` (``init="pretrained"``), or its scratch control: the same
    config, heads included, randomly initialised after :func:`~cellmamba._util.seed_all` of
    ``seed`` (the pretraining seed). In eval mode, on the CPU."""
    from .models import CellModel
    from .models.model import check_init

    check_init(init, where="load_gene_model")
    if init == "scratch":
        seed_all(seed)
        model = CellModel.scratch_like(model_dir, backend=backend)
    else:
        model = CellModel.from_pretrained(model_dir, backend=backend)
    if model.config.embedding.kind != "rank":
        raise InputError(f"{model_dir}: the gene analyses read rank (genemamba) models; this one reads "
                         f"{model.config.embedding.kind!r} tokens")
    return model.eval()


def _lookup(token_ids: np.ndarray, size: int) -> np.ndarray:
    """int64 (size,): the position of each token id in ``token_ids``, -1 for the others."""
    out = np.full(size, -1, dtype=np.int64)
    out[np.asarray(token_ids, dtype=np.int64)] = np.arange(len(token_ids))
    return out


def token_embeddings(model, token_ids) -> np.ndarray:
    """float32 (n, d_model): the input embedding table's rows of ``token_ids`` (n,)."""
    from .train.objectives import gene_embedding_table

    table = gene_embedding_table(model)
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))
    return table.detach()[ids.to(table.device)].float().cpu().numpy()


def _loader(tokens, batch_size: int):
    from torch.utils.data import DataLoader

    from .tasks.finetune import collator_for
    from .tasks.tokens import TokenCells

    collate = collator_for(tokens, mask_ratio=0.0, include_zeros=False, seed=0)  # nothing hidden
    return DataLoader(TokenCells(tokens), batch_size=batch_size, shuffle=False, collate_fn=collate)


@torch.no_grad()
def contextual_embeddings(model, tokens, token_ids, *, batch_size: int = 32, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's contextual state: the backbone's output at the gene's position (nothing
    masked), averaged over the cells of ``tokens`` in which the gene appears.

    Parameters
    ----------
    model
        A rank :class:`~cellmamba.models.CellModel`.
    tokens
        :class:`~cellmamba.tasks.tokens.DatasetTokens` of the cells.
    token_ids : (n,)
        The genes, as token ids.
    batch_size, device
        Cells per forward pass; torch device (default CUDA when available; bf16 autocast there).

    Returns
    -------
    means : float32 (n, d_model)
        Zeros for a gene that appears in no cell.
    counts : int64 (n,)
        Cells in which each gene appears.
    """
    from .train.batches import to_device
    from .train.precision import autocast, resolve_precision
    from .tasks.finetune import pick_device

    device = pick_device(device)
    model = model.to(device).eval()
    precision = resolve_precision("auto", device)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    lookup = torch.from_numpy(_lookup(token_ids, model.config.embedding.vocab_size)).to(device)
    sums = torch.zeros(len(token_ids), model.config.backbone.d_model, dtype=torch.float64, device=device)
    counts = torch.zeros(len(token_ids), dtype=torch.int64, device=device)
    for batch in _loader(tokens, batch_size):
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        where = lookup[batch["input_ids"]]
        sel = batch["attention_mask"] & (where >= 0)
        sums.index_add_(0, where[sel], out.hidden[sel].double())
        counts.index_add_(0, where[sel], torch.ones_like(where[sel]))  # a gene appears once per cell
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return means.float().cpu().numpy(), counts.cpu().numpy()


def _gene_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(..., vocab) -> (...,) the most likely GENE token id (special tokens never predicted)."""
    return logits[..., N_SPECIAL:].argmax(-1) + N_SPECIAL


@torch.no_grad()
def predict_positions(model, tokens, *, lm: str = "masked_gene", mask_ratio: float = 0.15, seed: int = 0,
                      batch_size: int = 32, device=None) -> list[np.ndarray]:
    """The gene the model's gene head predicts at every position of every cell (the scheme of the
    module docstring).

    Parameters
    ----------
    model
        A rank CellModel with a ``gene`` head (genemamba pretraining's).
    tokens
        :class:`~cellmamba.tasks.tokens.DatasetTokens`.
    lm
        The objective the model was pretrained with: "masked_gene" or "next_token".
    mask_ratio
        masked_gene: the share of positions hidden per pass (the pretraining mask_ratio).
    seed
        Seed of the passes' random split of each cell's positions.

    Returns
    -------
    Per cell, int64 (L_c,): the predicted token id at each position (-1: no prediction).
    """
    from .models.heads import next_token_logits
    from .train.batches import to_device
    from .train.precision import autocast, resolve_precision
    from .tasks.finetune import pick_device

    if lm not in LMS:
        raise InputError(f"predict_positions: lm must be one of {LMS}, got {lm!r}")
    if not 0 < mask_ratio <= 1:
        raise InputError(f"predict_positions: mask_ratio must be in (0, 1], got {mask_ratio!r}")
    if "gene" not in model.heads:
        raise InputError(f"predict_positions: the model has no 'gene' head (it has {sorted(model.heads)}); "
                         "expected a genemamba pretraining model")
    head = model.heads["gene"]
    device = pick_device(device)
    model = model.to(device).eval()
    precision = resolve_precision("auto", device)
    n_passes = max(1, int(round(1.0 / mask_ratio))) if lm == "masked_gene" else 1
    out_cells: list[np.ndarray] = []
    for batch in _loader(tokens, batch_size):
        ids, attn = batch["input_ids"], batch["attention_mask"]
        lengths = attn.sum(1).numpy()
        pred = torch.full(ids.shape, -1, dtype=torch.int64)
        if lm == "masked_gene":
            group = np.full(ids.shape, -1, dtype=np.int64)  # the pass in which each position is hidden
            for r, (c, n) in enumerate(zip(batch["cell_index"].tolist(), lengths)):
                order = np.random.default_rng([seed, 24, int(c)]).permutation(int(n))
                group[r, order] = np.arange(int(n)) % n_passes
            group = torch.from_numpy(group)
            for k in range(n_passes):
                hide = group == k
                if not bool(hide.any()):
                    continue
                masked = to_device({"input_ids": ids.masked_fill(hide, MASK_ID), "attention_mask": attn}, device)
                with autocast(device, precision):
                    out = model(masked["input_ids"], attention_mask=masked["attention_mask"])
                    logits = head.logits(out.hidden[hide.to(device)])
                pred[hide] = _gene_argmax(logits.float()).cpu()
        else:
            b = to_device({"input_ids": ids, "attention_mask": attn}, device)
            with autocast(device, precision):
                out = model(b["input_ids"], attention_mask=b["attention_mask"])
                nxt, prv = next_token_logits(head, out)
            nxt = torch.log_softmax(nxt.float(), -1).cpu()
            score = torch.zeros(ids.shape + (nxt.shape[-1],))
            seen = torch.zeros(ids.shape, dtype=torch.bool)
            score[:, 1:] += nxt[:, :-1]  # forward state i - 1 predicts position i
            seen[:, 1:] = True
            if prv is not None:  # reverse state i + 1 predicts position i
                score[:, :-1] += torch.log_softmax(prv.float(), -1).cpu()[:, 1:]
                seen[:, :-1] = True
            pred = torch.where(seen, _gene_argmax(score), pred)
        for r, n in enumerate(lengths):
            out_cells.append(pred[r, :int(n)].numpy().copy())
    return out_cells


# ---------------------------------------------------------------- gene pairs
def _vocabulary(model_dir) -> Vocabulary:
    from .embedding import read_model_vocabulary

    return Vocabulary.from_var(read_model_vocabulary(model_dir), source=str(Path(model_dir) / "vocabulary.tsv"))


def _gene_sets(paths: Sequence, vocabulary: Vocabulary):
    from .train.pathways import load_gene_sets

    return load_gene_sets(list(paths), vocabulary, min_genes=2) if paths else None


def build_pair_set(model_dir: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike, *,
                   held_out: Sequence[str | os.PathLike], trained: Sequence[str | os.PathLike],
                   config: GeneAnalysisConfig) -> pd.DataFrame:
    """The gene pairs every model and reference is scored on, written to ``out`` (TSV, gzip by suffix).

    Parameters
    ----------
    model_dir
        A model directory: its vocabulary maps the sets' symbols to tokens, and its tokenizer and
        context say which genes appear in the held-out cells.
    dataset
        The held-out cells (an evaluation dataset's h5ad).
    held_out
        GMT files of the sets the pairs are labelled by (never seen by the pathway loss).
    trained
        GMT files the pathway loss trained on (empty when it was off): ``trained`` pairs share one.
    config
        ``n_cells``, ``min_cells``, ``max_genes``, ``max_pairs``, ``seed``.

    Returns
    -------
    DataFrame (n_pairs,) with :data:`PAIR_COLUMNS`: token ids, Ensembl ids and symbols of the two
    genes, ``held_out`` (the label), ``trained``.
    """
    from .metrics.genes import comembership, membership_matrix, sample_pairs

    both = sorted({Path(p).resolve() for p in held_out} & {Path(p).resolve() for p in trained})
    if both:
        raise InputError(f"config: {[str(p) for p in both]} is both a held-out gene set file (genes.held_out_gene_sets) "
                         "and one the pathway loss trained on (pretrain.gene_sets); held-out sets must be unseen")
    vocab = _vocabulary(model_dir)
    held = _gene_sets(held_out, vocab)
    if held is None:
        raise InputError("config: genes.held_out_gene_sets is empty; the pairs need held-out gene sets (GMT files)")
    tokens, _ = held_out_tokens(dataset, model_dir, n_cells=config.n_cells, seed=config.seed)
    cells_with = np.bincount(tokens.batch.tokens.astype(np.int64), minlength=vocab.size)  # a gene appears once per cell
    in_sets = np.unique(np.concatenate(held.members))
    genes = in_sets[cells_with[in_sets] >= config.min_cells]
    log.info("%d genes of the vocabulary are in a held-out set; %d of them appear in >= %d of the %d sampled cells",
             len(in_sets), len(genes), config.min_cells, len(tokens.batch))
    if config.max_genes is not None and len(genes) > config.max_genes:
        genes = np.sort(np.random.default_rng([config.seed, 25]).choice(genes, size=config.max_genes, replace=False))
        log.info("kept a seeded subset of %d genes (genes.max_genes)", len(genes))
    if len(genes) < 2:
        raise InputError(f"{dataset}: only {len(genes)} gene(s) of the held-out sets {list(map(str, held_out))} appear "
                         f"in >= {config.min_cells} of its {len(tokens.batch)} sampled cells; the pairs need 2 or more "
                         "(raise genes.n_cells or lower genes.min_cells)")
    held_co = comembership(membership_matrix(genes, held.members))
    trained_sets = _gene_sets(trained, vocab)
    trained_co = (comembership(membership_matrix(genes, trained_sets.members)) if trained_sets is not None
                  else np.zeros((len(genes), len(genes)), dtype=bool))
    a, b = sample_pairs(len(genes), lambda i, j: 2 * held_co[i, j] + trained_co[i, j], max_pairs=config.max_pairs,
                        seed=config.seed)
    ta, tb = genes[a], genes[b]
    frame = pd.DataFrame({"token_a": ta, "token_b": tb,
                          "feature_id_a": vocab.feature_ids[ta - N_SPECIAL], "feature_id_b": vocab.feature_ids[tb - N_SPECIAL],
                          "gene_a": vocab.feature_names[ta - N_SPECIAL], "gene_b": vocab.feature_names[tb - N_SPECIAL],
                          "held_out": held_co[a, b], "trained": trained_co[a, b]}, columns=list(PAIR_COLUMNS))
    log.info("%d pairs of %d genes (of %d): %d share a held-out set (%.4f), %d share a trained set; strict: %d pairs, "
             "%d positive", len(frame), len(genes), len(genes) * (len(genes) - 1) // 2, int(frame["held_out"].sum()),
             frame["held_out"].mean(), int(frame["trained"].sum()), int((~frame["trained"]).sum()),
             int((frame["held_out"] & ~frame["trained"]).sum()))
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, compression="gzip" if str(out).endswith(".gz") else None)
    return frame


def read_pair_set(path: str | os.PathLike, *, vocabulary: Vocabulary | None = None) -> pd.DataFrame:
    """A pair set written by :func:`build_pair_set`, checked (columns; with ``vocabulary``, that
    its token ids are the same genes there)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected the gene pair set, results/genes/pairs.tsv.gz)")
    frame = pd.read_csv(path, sep="\t")
    missing = [c for c in PAIR_COLUMNS if c not in frame]
    if missing:
        raise InputError(f"{path}: lacks columns {missing}; expected {list(PAIR_COLUMNS)} (a pair set of build_pair_set)")
    frame["held_out"], frame["trained"] = frame["held_out"].astype(bool), frame["trained"].astype(bool)
    if vocabulary is not None:
        for side in "ab":
            tok = frame[f"token_{side}"].to_numpy(np.int64) - N_SPECIAL
            if tok.min() < 0 or tok.max() >= len(vocabulary) or \
                    (vocabulary.feature_ids[tok] != frame[f"feature_id_{side}"].to_numpy(str)).any():
                raise InputError(f"{path}: its token ids are other genes in this model's vocabulary (pairs built "
                                 "for a model of another corpus?); rebuild the pair set")
    return frame


def _pair_rows(scores: np.ndarray, pairs: pd.DataFrame, *, method: str, seed: int, extra: dict) -> list[pd.DataFrame]:
    """Long metric rows of one score on the pair set: one frame per pair set (dataset ``all`` / ``strict``)."""
    from .metrics.genes import pair_set_scores
    from .metrics.rows import metrics_frame

    n_genes = float(len(np.unique(np.concatenate([pairs["token_a"], pairs["token_b"]]))))
    by_set = pair_set_scores(scores, pairs["held_out"].to_numpy(), pairs["trained"].to_numpy())
    return [metrics_frame({**values, "n_genes": n_genes}, task="gene_pairs", dataset=name, method=method, seed=seed,
                          extra=extra) for name, values in by_set.items()]


def gene_pair_rows(model_dir: str | os.PathLike, dataset: str | os.PathLike, pairs_path: str | os.PathLike, *,
                   method: str, init: str, pretrain_seed: int, config: GeneAnalysisConfig,
                   device=None) -> pd.DataFrame:
    """Metric rows (task ``gene_pairs``; dataset ``all`` / ``strict``; flag ``embedding`` token /
    contextual) of one model: AUROC / AUPRC of the genes' embedding cosine similarity against
    held-out co-membership (:func:`cellmamba.metrics.genes.pair_scores`).

    Raises
    ------
    InputError
        The pair set's genes are not this model's, or a gene of the pairs appears in none of the
        sampled cells under this model's tokenizer (a pair set built for another context).
    """
    from .metrics.genes import cosine_scores

    pairs = read_pair_set(pairs_path, vocabulary=_vocabulary(model_dir))
    model = load_gene_model(model_dir, init=init, seed=pretrain_seed, backend=config.backend)
    genes = np.unique(np.concatenate([pairs["token_a"], pairs["token_b"]])).astype(np.int64)
    ia, ib = np.searchsorted(genes, pairs["token_a"]), np.searchsorted(genes, pairs["token_b"])
    tokens, _ = held_out_tokens(dataset, model_dir, n_cells=config.n_cells, seed=config.seed)
    context, counts = contextual_embeddings(model, tokens, genes, batch_size=config.batch_size, device=device)
    if (counts == 0).any():
        raise InputError(f"{pairs_path}: {int((counts == 0).sum())} of its {len(genes)} genes appear in none of the "
                         f"{len(tokens.batch)} sampled cells of {dataset} as {model_dir} tokenizes them (the pair set "
                         "was built with another model's tokenizer or context); rebuild the pairs from this model")
    log.info("%s: contextual states of %d genes from %d cells (median %d cells per gene)", method, len(genes),
             len(tokens.batch), int(np.median(counts)))
    frames = []
    for kind, emb in (("token", token_embeddings(model, genes)), ("contextual", context)):
        frames += _pair_rows(cosine_scores(emb, ia, ib), pairs, method=method, seed=pretrain_seed,
                             extra={"embedding": kind})
    return pd.concat(frames, ignore_index=True)


def corpus_expression(shards: Sequence[str | os.PathLike], feature_ids, *, n_cells: int, seed: int):
    """Log-normalised expression of ``feature_ids`` in a seeded sample of the corpus's QC shards.

    Cells are drawn across the shards in proportion to their sizes; each is normalised over all
    its genes (scanpy ``normalize_total`` to 1e4, ``log1p``).

    Returns
    -------
    X : scipy.sparse.csr_matrix (n_sampled, n_genes)
    groups : int64 (n_sampled,)
        Each cell's dataset (column of ``measured``).
    measured : bool (n_genes, n_datasets)
        Which dataset measured which gene (the shards' ``varm["measured"]``).
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    from .keys import OBS_DATASET_ID, UNS, UNS_MEASURED_DATASETS, VAR_FEATURE_ID, VARM_MEASURED
    from .qc import check_shard_layout

    feature_ids = pd.Index(np.asarray(feature_ids, dtype=str))
    handles = [read_h5ad_checked(p, backed="r") for p in shards]
    try:
        sizes = np.array([h.n_obs for h in handles], dtype=np.int64)
        picked = sample_cells(int(sizes.sum()), n_cells, seed)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        datasets: dict[str, int] = {}
        blocks, groups, measured_cols = [], [], {}
        for k, (path, h) in enumerate(zip(shards, handles)):
            rows = picked[(picked >= starts[k]) & (picked < starts[k + 1])] - starts[k]
            if not rows.size:
                continue
            check_shard_layout(h, source=str(path))
            cols = pd.Index(h.var[VAR_FEATURE_ID].astype(str)).get_indexer(feature_ids)
            if (cols < 0).any():
                raise InputError(f"{path}: {int((cols < 0).sum())} of the evaluated genes are not in its var "
                                 f"(e.g. {list(feature_ids[cols < 0][:3])}); expected shards of the model's corpus")
            sub = ad.AnnData(X=sp.csr_matrix(h.X[np.sort(rows)]).astype(np.float32))
            sc.pp.normalize_total(sub, target_sum=1e4)
            sc.pp.log1p(sub)
            blocks.append(sub.X[:, cols])
            names = list(h.uns.get(UNS, {}).get(UNS_MEASURED_DATASETS, []))
            shard_measured = np.asarray(h.varm[VARM_MEASURED], dtype=bool)[cols]
            for name, column in zip(names, shard_measured.T):
                j = datasets.setdefault(str(name), len(datasets))
                measured_cols[j] = measured_cols.get(j, np.zeros(len(feature_ids), bool)) | column
            col_of = {str(n): datasets[str(n)] for n in names}
            groups.append(h.obs[OBS_DATASET_ID].astype(str).iloc[np.sort(rows)].map(col_of).to_numpy())
    finally:
        for h in handles:
            h.file.close()
    groups = np.concatenate(groups)
    if pd.isna(groups).any():
        raise InputError(f"{shards}: a cell's dataset_id is not among its shard's measured_datasets")
    measured = np.stack([measured_cols[j] for j in range(len(datasets))], axis=1)
    X = sp.vstack(blocks).tocsr()
    log.info("co-expression: %d corpus cells of %d (seed %d) from %d shards, %d datasets", X.shape[0],
             int(sizes.sum()), seed, len(shards), len(datasets))
    return X, groups.astype(np.int64), measured


def pair_reference_rows(pairs_path: str | os.PathLike, shards: Sequence[str | os.PathLike], *,
                        config: GeneAnalysisConfig) -> pd.DataFrame:
    """Metric rows of the two references on the pair set: ``coexpression`` (Pearson r of
    log-normalised expression over a seeded sample of corpus cells, each pair over the cells
    whose dataset measured both genes; a pair without a value scores 0, counted in the note) and
    ``random`` (seeded uniform scores: AUROC ~0.5, AUPRC ~ the positive rate)."""
    from .metrics.genes import coexpression_scores

    pairs = read_pair_set(pairs_path)
    ids = pd.Index(pd.concat([pairs["feature_id_a"], pairs["feature_id_b"]]).unique())
    X, groups, measured = corpus_expression(shards, ids, n_cells=config.coexpression_cells, seed=config.seed)
    r = coexpression_scores(X, ids.get_indexer(pairs["feature_id_a"]), ids.get_indexer(pairs["feature_id_b"]),
                            groups=groups, measured=measured)
    missing = ~np.isfinite(r)
    frames = _pair_rows(np.where(missing, 0.0, r), pairs, method="coexpression", seed=config.seed,
                        extra={"embedding": ""})
    if missing.any():
        note = (f"{int(missing.sum())} of {len(r)} pairs have no correlation (a gene constant or unmeasured in the "
                f"{X.shape[0]} corpus cells) and score 0")
        for f in frames:
            f.loc[f["metric"].isin(["auroc", "auprc"]), "note"] = note
        log.info("co-expression: %s", note)
    scores = np.random.default_rng([config.seed, 26]).random(len(pairs))
    frames += _pair_rows(scores, pairs, method="random", seed=config.seed, extra={"embedding": ""})
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- rank reconstruction
def reconstruction_scheme(lm: str, mask_ratio: float) -> str:
    """The table's words for how :func:`predict_positions` predicts every position."""
    if lm == "next_token":
        return "next_token: one pass"
    n = max(1, int(round(1.0 / mask_ratio)))
    return f"masked_gene: {n} passes, 1/{n} hidden each"


def rank_reconstruction_files(model_dir: str | os.PathLike, dataset: str | os.PathLike, *, method: str, init: str,
                              pretrain_seed: int, lm: str, mask_ratio: float, config: GeneAnalysisConfig,
                              metrics_out: str | os.PathLike, per_cell_out: str | os.PathLike,
                              density_out: str | os.PathLike, dataset_name: str, device=None) -> pd.DataFrame:
    """Reconstruct the rank sequences of the held-out cells with one model and score them.

    Writes ``metrics_out`` (long metric rows: task ``rank_reconstruction``, the means over cells of
    :func:`cellmamba.metrics.genes.score_reconstruction`), ``per_cell_out`` (one row per cell, its
    obs name first) and ``density_out`` (the 2-D histogram of input rank x reconstructed rank over
    every gene present in both rankings of every cell: columns ``input_start``, ``input_end``,
    ``output_start``, ``output_end``, ``count``, ranks 0-based, bins [start, end)). Returns the
    metric rows.
    """
    from .metrics.genes import rank_pairs, score_reconstruction, summarize_reconstruction
    from .metrics.rows import metrics_frame, write_csv

    model = load_gene_model(model_dir, init=init, seed=pretrain_seed, backend=config.backend)
    tokens, names = held_out_tokens(dataset, model_dir, n_cells=config.n_cells, seed=config.seed)
    predicted = predict_positions(model, tokens, lm=lm, mask_ratio=mask_ratio, seed=config.seed,
                                  batch_size=config.batch_size, device=device)
    inputs = [np.asarray(tokens.batch.cell(c)[0], dtype=np.int64) for c in range(len(tokens.batch))]
    per_cell = score_reconstruction(inputs, predicted, top_k=config.top_k)
    per_cell.insert(0, "cell", np.asarray(names, dtype=str))
    summary = summarize_reconstruction(per_cell.drop(columns="cell"))
    rows = metrics_frame(summary, task="rank_reconstruction", dataset=dataset_name, method=method, seed=pretrain_seed,
                         extra={"scheme": reconstruction_scheme(lm, mask_ratio)})
    context = int(tokens.max_len)
    bins = np.linspace(0, context, min(DENSITY_BINS, context) + 1)
    pairs = [rank_pairs(g, p) for g, p in zip(inputs, predicted)]
    x = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
    y = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0)
    hist, _, _ = np.histogram2d(x, y, bins=[bins, bins])
    i, j = np.meshgrid(np.arange(len(bins) - 1), np.arange(len(bins) - 1), indexing="ij")
    density = pd.DataFrame({"input_start": bins[i.ravel()], "input_end": bins[i.ravel() + 1],
                            "output_start": bins[j.ravel()], "output_end": bins[j.ravel() + 1],
                            "count": hist.ravel().astype(np.int64)})
    log.info("%s: %d cells reconstructed (%s); %s", method, len(per_cell), rows["scheme"].iloc[0],
             ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    write_csv(per_cell, per_cell_out)
    write_csv(density, density_out)
    write_csv(rows, metrics_out)
    return rows

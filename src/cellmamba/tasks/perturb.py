"""Perturbation prediction (Norman 2019, GEARS version; DATASETS.md §5): fine-tune a pretrained
model to map a control cell to the perturbed cell, as scGPT / SC-MAMBA2 do. The model and its
value encoder are :mod:`cellmamba.models.perturb`; this module pairs the cells, trains and predicts.

Protocol (scGPT ``Tutorial_Perturbation``, SC-MAMBA2 ``Fig4_PerturbPred.py``):

- Every training perturbed cell (conditions in ``train_conditions``; ``ctrl`` is never a target,
  SC-MAMBA2 removes it from train and val) is paired with ONE random control cell, seeded, once
  (GEARS ``create_cell_graph_dataset``). Input: the control cell's log1p values of the gene set;
  target: the perturbed cell's log1p values of the same genes; a flag of 1 on the condition's
  perturbed genes. Values are X as published (Norman: log1p(normalize_total) at the median
  target); ``n_bins=0``: the values enter through a continuous value encoder, never binned.
- Every gene of the gene set is a token, expressed or not (``include_zero_gene="all"``);
  longer gene sets are cut to ``max_len`` genes at random per training item.
- Loss: MSE over all real positions (scGPT's ``masked_mse`` with every gene counted).
- Prediction of a condition: the mean, over ``pool_size`` random control cells (drawn with
  replacement, as scGPT's ``pred_perturb``), of the predicted profile; all genes in one
  sequence. A condition needs no cells, so reverse-perturbation candidates are predicted too.

Departures from the published procedure:

- Gene order is the dataset's gene order, fixed, in training and prediction. scGPT draws its
  ``max_seq_len`` training genes with ``torch.randperm`` (a new random ORDER each batch);
  a Mamba backbone is order-sensitive, so the training subset is sorted back into dataset order.
- The ``max_len`` subset is drawn per item (scGPT: one subset per batch) and ALWAYS contains the
  condition's perturbed genes (scGPT's random subset may drop them, leaving no flag).
- No CLS token; the pretrained binned models' categorical value embedding (and the rank
  models' lack of one) is replaced by a new continuous value encoder for every model
  (scGPT's perturbation setting is ``n_bins=0``).
- Dataset genes without a vocabulary id are not tokens (scGPT feeds them as ``<pad>``-id
  tokens); they are predicted as the control mean (no change) and counted.
- Optimisation is the shared loop's AdamW with linear warm-up + cosine decay (scGPT: Adam,
  StepLR gamma 0.9 per epoch); validation runs each epoch on ``valid_conditions`` (MSE only,
  on ``max_len`` gene subsets like training; scGPT scores validation on all genes by Pearson)
  and the weights of the epoch with the lowest validation loss predict (``keep_best``; scGPT
  keeps its best-validation model too, and stops early after 10 epochs without improvement: we
  run every epoch).
- The prediction pool is ``pool_size`` controls for every condition (scGPT's test evaluation
  pairs each test cell with one random control, i.e. as many controls as test cells; its
  reverse perturbation uses 30).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..conditions import CTRL, condition_genes
from ..datasets import VAR_GENE_NAME
from .._util import seed_all
from ..errors import InputError
from ..io import atomic_path
from ..keys import OBS_CONDITION, UNS, UNS_X_KIND
from ..models.model import check_init
from ..models.perturb import ContinuousValueEncoder, PerturbationModel, PerturbationModelConfig
from ..train import train
from ..train.config import OptimConfig
from ..train.objectives import masked_mse
from ..vocab import N_SPECIAL
from .finetune import pick_device
from .tokens import vocabulary_index

# ContinuousValueEncoder, PerturbationModelConfig, PerturbationModel live in cellmamba.models.perturb;
# their names here keep the old import path (recorded in saved config.json files) working
__all__ = ["PerturbConfig", "ContinuousValueEncoder", "PerturbationModelConfig", "PerturbationModel",
           "PerturbationObjective", "PerturbationBatches", "PerturbationResult", "pair_controls", "condition_flags", "control_pool",
           "predict_conditions", "run_perturbation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerturbConfig(OptimConfig):
    """Settings of one perturbation fine-tuning run: the optimisation block
    (:class:`~cellmamba.train.config.OptimConfig`; ``batch_size`` and ``micro_batch_size`` count
    (control, perturbed) pairs) and the task's own."""

    epochs: int = 15                  # passes over the training perturbed cells (scGPT: 15)
    lr: float = 1e-4                  # peak learning rate (scGPT: 1e-4)
    batch_size: int = 64              # (control, perturbed) pairs per step (scGPT: 64)
    seed: int = 0                     # new modules' init, pairing, data order, gene subsets, prediction pools
    max_len: int = 1536               # genes per training sequence (scGPT 1536, SC-MAMBA2 6000); prediction uses all
    pool_size: int = 100              # control cells averaged per predicted condition (scGPT reverse perturbation: 30)
    embed_batch_size: int = 64        # sequences per forward pass when predicting
    keep_best: bool = True            # predict with the epoch of lowest validation loss (scGPT's best_model)
    init: str = "pretrained"          # "pretrained" weights, or "scratch": the same architecture from random init (the control)

    def __post_init__(self):
        super().__post_init__()
        check_init(self.init, where="PerturbConfig")
        for name, low in (("max_len", 2), ("pool_size", 1), ("embed_batch_size", 1)):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                raise InputError(f"PerturbConfig: {name} must be an integer >= {low}, got {v!r}")


# ---------------------------------------------------------------- the objective
class PerturbationObjective:
    """MSE of the predicted against the perturbed cell's values over all real positions.

    Batches (see :class:`PerturbationBatches`): ``input_ids``, ``values``, ``flags``,
    ``target`` (batch, seq_len), ``attention_mask``. Metric: ``mse_perturbed`` (MSE at the
    flagged genes; NaN-free: 0 when a batch has none)."""

    def __call__(self, model, batch):
        mask = batch["attention_mask"]
        pred = model(batch["input_ids"], batch["values"], batch["flags"], mask)
        loss = masked_mse(pred, batch["target"], mask)
        flagged = mask & (batch["flags"] == 1)
        return loss, {"mse_perturbed": masked_mse(pred.detach(), batch["target"], flagged)}


# ---------------------------------------------------------------- data
def _conditions_array(conditions) -> np.ndarray:
    return np.asarray(pd.Series(conditions).astype(str), dtype=object)


def pair_controls(conditions, targets: Sequence[str], *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One random control cell for each perturbed cell of ``targets`` (GEARS pairing), seeded.

    Parameters
    ----------
    conditions
        (n_cells,) GEARS condition of every cell (``ctrl`` for controls).
    targets
        Conditions whose cells are targets; ``ctrl`` in it is ignored (never a target).
    seed
        The pairing is a function of (seed, conditions, targets) only.

    Returns
    -------
    perturbed : int64 (n_pairs,) cell positions, in cell order
    controls : int64 (n_pairs,) the control cell paired with each (drawn with replacement)
    """
    conds = _conditions_array(conditions)
    ctrl = np.flatnonzero(conds == CTRL)
    if len(ctrl) == 0:
        raise InputError(f"perturbation: no control cells (obs {OBS_CONDITION!r} == {CTRL!r})")
    wanted = sorted(set(map(str, targets)) - {CTRL})
    missing = sorted(set(wanted) - set(conds))
    if missing:
        log.warning("perturbation: %d listed condition(s) have no cells: %s", len(missing), missing[:10])
    pert = np.flatnonzero(pd.Series(conds).isin(wanted).to_numpy())
    rng = np.random.default_rng([seed, 0x9E37])
    return pert.astype(np.int64), ctrl[rng.integers(len(ctrl), size=len(pert))].astype(np.int64)


def condition_flags(conditions: Sequence[str], gene_names: Sequence[str]) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Flag matrix of conditions over a gene set.

    Returns
    -------
    flags : bool (n_conditions, n_genes), True at each condition's perturbed genes
    unflagged : condition -> its genes absent from ``gene_names`` (only conditions with some);
        each is logged as a warning: such a gene cannot carry the flag.
    """
    index = pd.Index(np.asarray(gene_names, dtype=str))
    flags = np.zeros((len(conditions), len(index)), dtype=bool)
    unflagged: dict[str, list[str]] = {}
    for i, cond in enumerate(conditions):
        genes = condition_genes(str(cond))
        pos = index.get_indexer(list(genes)) if genes else np.zeros(0, np.int64)
        flags[i, pos[pos >= 0]] = True
        lost = [g for g, p in zip(genes, pos) if p < 0]
        if lost:
            unflagged[str(cond)] = lost
            log.warning("perturbation: condition %s: gene(s) %s are not in the model's gene set and carry no flag",
                        cond, lost)
    return flags, unflagged


def _dense_rows(X, rows: np.ndarray) -> np.ndarray:
    sub = X[rows]
    return np.asarray(sub.toarray() if sp.issparse(sub) else sub, dtype=np.float32)


class PerturbationBatches:
    """Batches of (control, perturbed) pairs; iterating gives epoch 0, ``batches.for_epoch(e)``
    epoch e (a factory for :func:`cellmamba.train.train`).

    Each epoch: the pairs in a seeded order (``shuffle``) and, where the gene set is longer
    than ``max_len``, a seeded random subset of ``max_len`` genes per item that always holds the
    perturbed genes, kept in gene-set order. Everything is a function of (seed, epoch).

    Batch keys: ``input_ids`` int64 (B, L) token ids, ``values`` float32 (B, L) control log1p,
    ``flags`` int64 (B, L), ``target`` float32 (B, L) perturbed log1p, ``attention_mask`` bool
    (B, L), ``cell_index`` int64 (B,) the perturbed cells; L = min(n_genes, max_len).
    """

    def __init__(self, X, perturbed: np.ndarray, controls: np.ndarray, *, flags: np.ndarray, gene_ids: np.ndarray,
                 batch_size: int, max_len: int, seed: int, shuffle: bool = True):
        self.X = X
        self.perturbed = np.asarray(perturbed, dtype=np.int64)
        self.controls = np.asarray(controls, dtype=np.int64)
        self.flags = np.asarray(flags, dtype=bool)              # (n_pairs, n_genes)
        self.gene_ids = np.asarray(gene_ids, dtype=np.int64)    # (n_genes,)
        self.batch_size, self.max_len, self.seed, self.shuffle = int(batch_size), int(max_len), int(seed), shuffle
        if not (len(self.perturbed) == len(self.controls) == len(self.flags)):
            raise InputError("PerturbationBatches: perturbed, controls and flags must have one length")
        if self.flags.shape[1:] != self.gene_ids.shape:
            raise InputError(f"PerturbationBatches: flags have {self.flags.shape[1:]} genes, gene_ids {self.gene_ids.shape}")
        if len(self.flags) and int(self.flags.sum(1).max()) > self.max_len:
            raise InputError(f"PerturbationBatches: a condition flags more genes than max_len={self.max_len}")

    def __len__(self) -> int:
        return math.ceil(len(self.perturbed) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        return self.for_epoch(0)

    def gene_subset(self, flags: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """int64 (B, L) sorted gene positions per item: all genes, or ``max_len`` of them
        drawn at random with every flagged gene kept."""
        B, G = flags.shape
        if G <= self.max_len:
            return np.broadcast_to(np.arange(G), (B, G))
        keys = rng.random((B, G))
        keys[flags] = -1.0  # flagged genes sort first: always inside the subset
        sel = np.argpartition(keys, self.max_len - 1, axis=1)[:, :self.max_len]
        sel.sort(axis=1)
        return sel

    def for_epoch(self, epoch: int) -> Iterator[dict]:
        rng = np.random.default_rng([self.seed, int(epoch), 0x5EED])
        n = len(self.perturbed)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            flags = self.flags[idx]
            sel = self.gene_subset(flags, rng)
            values = np.take_along_axis(_dense_rows(self.X, self.controls[idx]), sel, axis=1)
            target = np.take_along_axis(_dense_rows(self.X, self.perturbed[idx]), sel, axis=1)
            yield {"input_ids": torch.from_numpy(np.ascontiguousarray(self.gene_ids[sel])),
                   "values": torch.from_numpy(np.ascontiguousarray(values)),
                   "flags": torch.from_numpy(np.take_along_axis(flags, sel, axis=1).astype(np.int64)),
                   "target": torch.from_numpy(np.ascontiguousarray(target)),
                   "attention_mask": torch.ones(sel.shape, dtype=torch.bool),
                   "cell_index": torch.from_numpy(self.perturbed[idx].copy())}


# ---------------------------------------------------------------- prediction
def control_pool(condition: str, n_controls: int, *, pool_size: int, seed: int) -> np.ndarray:
    """int64 (pool_size,): the control cells (positions among ``n_controls``) whose predictions
    are averaged for ``condition``; drawn with replacement (scGPT's ``np.random.randint``) from
    a stream seeded by (seed, the condition's name), so a condition's pool does not depend on
    which other conditions are predicted."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(condition).encode())])
    return rng.integers(n_controls, size=pool_size).astype(np.int64)


@torch.no_grad()
def predict_conditions(model: PerturbationModel, ctrl_values, conditions: Sequence[str], *, gene_ids: np.ndarray,
                       gene_names: Sequence[str], pool_size: int, seed: int, batch_size: int = 64,
                       device=None, progress: bool = True) -> pd.DataFrame:
    """Predicted mean log1p profile of each condition.

    Parameters
    ----------
    model
        A (fine-tuned) :class:`PerturbationModel`.
    ctrl_values
        (n_controls, n_genes) dense or sparse: control cells' log1p values of the gene set.
    conditions
        GEARS condition strings (no duplicates); they need no cells.
    gene_ids
        int64 (n_genes,) token ids of the gene set, in sequence order.
    gene_names
        (n_genes,) symbols: flags and the output's columns.
    pool_size, seed
        Control cells per condition (:func:`control_pool`).
    batch_size
        Sequences per forward pass; each sequence holds ALL ``n_genes`` genes.

    Returns
    -------
    DataFrame (n_conditions, n_genes), index = conditions, columns = gene_names: the mean of
    the predictions over each condition's pool. ``df.attrs["unflagged"]``: condition -> genes
    not in the gene set (they carry no flag; see :func:`condition_flags`).
    """
    from ..runlog import progress as _bar

    from ..train.precision import autocast, resolve_precision

    conditions = [str(c) for c in conditions]
    dup = sorted(pd.Index(conditions)[pd.Index(conditions).duplicated()].unique())
    if dup:
        raise InputError(f"predict_conditions: conditions listed twice: {dup[:10]}")
    gene_ids = np.asarray(gene_ids, dtype=np.int64)
    n_ctrl, n_genes = ctrl_values.shape
    if n_genes != len(gene_ids) or len(gene_names) != len(gene_ids):
        raise InputError(f"predict_conditions: ctrl_values has {n_genes} genes, gene_ids {len(gene_ids)}, "
                         f"gene_names {len(gene_names)}")
    if n_ctrl == 0:
        raise InputError("predict_conditions: no control cells")
    ctrl = sp.csr_matrix(ctrl_values, dtype=np.float32) if sp.issparse(ctrl_values) else np.asarray(ctrl_values, np.float32)
    flags, unflagged = condition_flags(conditions, gene_names)
    rows = np.concatenate([control_pool(c, n_ctrl, pool_size=pool_size, seed=seed) for c in conditions]) \
        if conditions else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(conditions)), pool_size)
    device = pick_device(device)
    model = model.to(device).eval()
    precision = resolve_precision("auto", device)
    ids = torch.from_numpy(gene_ids).to(device)
    sums = torch.zeros(len(conditions), n_genes, dtype=torch.float64, device=device)
    starts = range(0, len(rows), batch_size)
    for start in _bar(starts, desc="predict", disable=not progress, dynamic_ncols=True):
        r, o = rows[start:start + batch_size], owner[start:start + batch_size]
        values = torch.from_numpy(_dense_rows(ctrl, r)).to(device)
        f = torch.from_numpy(flags[o].astype(np.int64)).to(device)
        with autocast(device, precision):
            pred = model(ids.expand(len(r), -1), values, f, torch.ones_like(f, dtype=torch.bool))
        sums.index_add_(0, torch.from_numpy(o).to(device), pred.double())
    df = pd.DataFrame((sums / pool_size).cpu().numpy().astype(np.float32), index=pd.Index(conditions, name="condition"),
                      columns=pd.Index(np.asarray(gene_names, dtype=str)))
    df.attrs["unflagged"] = unflagged
    return df


_predict_conditions = predict_conditions  # run_perturbation's keyword of the same name shadows it


# ---------------------------------------------------------------- the task
@dataclass
class PerturbationResult:
    """What :func:`run_perturbation` returns."""

    predictions: pd.DataFrame          # (n_predict_conditions, n_vars): index condition, columns var_names in dataset order
    unflagged: dict[str, list[str]]    # condition -> its genes without a token (no flag possible)
    n_genes_used: int                  # dataset genes that are tokens (matched to the vocabulary)
    n_genes_unmapped: int              # dataset genes without a vocabulary id: predicted as the control mean
    train: dict = field(default_factory=dict)  # training summary: step, epoch, samples, tokens, last_metrics, ...


#: largest X value taken for log1p expression (log1p(1e4 x 1e4) ~ 18.4; counts are far larger)
_MAX_LOG_VALUE = 50.0


def _log_values(adata, source: str):
    """X as float32 (CSR or dense), checked to look like log1p expression. x_kind may be
    ``log1p_norm`` or ``other`` (Norman's X is log1p at the MEDIAN target, which the readers
    call ``other``); ``counts`` and ``scaled`` are refused."""
    kind = adata.uns.get(UNS, {}).get(UNS_X_KIND)
    if kind in ("counts", "scaled", "normalized"):
        raise InputError(f"{source}: perturbation prediction reads log1p values from X, but "
                         f"uns['{UNS}']['{UNS_X_KIND}'] is {kind!r} (expected 'log1p_norm' or 'other')")
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    data = X.data if sp.issparse(X) else X
    if data.size and (float(data.min()) < 0 or float(data.max()) > _MAX_LOG_VALUE):
        raise InputError(f"{source}: X ranges over [{float(data.min()):g}, {float(data.max()):g}]; expected log1p "
                         f"expression in [0, {_MAX_LOG_VALUE:g}]")
    return X


def run_perturbation(adata, model_dir: str | os.PathLike, vocabulary: pd.DataFrame, *,
                     train_conditions: Sequence[str], valid_conditions: Sequence[str],
                     predict_conditions: Sequence[str], config: PerturbConfig, out_dir: str | os.PathLike,
                     device=None, aliases: pd.DataFrame | None = None) -> PerturbationResult:
    """Fine-tune a pretrained model for perturbation prediction and predict conditions.

    Parameters
    ----------
    adata
        Standard schema: obs ``condition`` (GEARS strings, ``ctrl`` for controls); X = log1p
        values as published (used as is; sparse or dense); var ``gene_name`` symbols (else
        var_names) and maybe ``gene_id``.
    model_dir
        Pretrained model directory (rank or binned tokens).
    vocabulary
        The pretraining gene table (gene_stats.tsv); genes are matched with
        :func:`~cellmamba.tasks.tokens.vocabulary_index`.
    train_conditions, valid_conditions
        Conditions whose cells are training targets / validation targets (``ctrl`` ignored).
    predict_conditions
        Conditions to predict (they need no cells).
    config
        :class:`PerturbConfig`.
    out_dir
        Training outputs (checkpoints, metrics.csv, eval_metrics.csv, model/) and
        ``perturbation.json`` (gene counts, pairs, unflagged genes).
    aliases
        Legacy-symbol alias table (:func:`cellmamba.genes.read_aliases`) for symbol-keyed data.

    Returns
    -------
    :class:`PerturbationResult`. Genes without a vocabulary id are not tokens: their
    predicted value is the control mean (no change); they are counted in ``n_genes_unmapped``.
    """
    seed_all(config.seed)
    out_dir = Path(out_dir)
    source = "perturbation dataset"
    if OBS_CONDITION not in adata.obs:
        raise InputError(f"{source}: obs has no {OBS_CONDITION!r} column (GEARS condition strings)")
    conds = _conditions_array(adata.obs[OBS_CONDITION])
    for c in sorted(set(conds)):
        condition_genes(c)  # malformed strings fail here, before any training
    X = _log_values(adata, source)
    index = vocabulary_index(adata.var, vocabulary, source=source, aliases=aliases)
    cols = np.flatnonzero(index >= 0)
    gene_ids = index[cols] + N_SPECIAL
    symbols = np.asarray(adata.var[VAR_GENE_NAME] if VAR_GENE_NAME in adata.var else adata.var_names, dtype=str)
    names = symbols[cols]
    Xt = X[:, cols]

    device = pick_device(device)
    model = PerturbationModel.from_pretrained(model_dir, backend=config.backend, seed=config.seed, init=config.init)
    if int(gene_ids.max()) >= model.vocab_size:
        raise InputError(f"{model_dir}: the vocabulary table has more genes than the model's vocab_size "
                         f"{model.vocab_size} (is it the table the model was pretrained with?)")

    train_conds = [c for c in train_conditions if str(c) != CTRL]
    valid_conds = [c for c in valid_conditions if str(c) != CTRL]
    all_conds = sorted(set(map(str, train_conds)) | set(map(str, valid_conds)))
    flag_table, unflagged = condition_flags(all_conds, names)
    flag_row = {c: i for i, c in enumerate(all_conds)}

    def batches(targets, seed, shuffle):
        pert, ctrl = pair_controls(conds, targets, seed=seed)
        flags = flag_table[[flag_row[c] for c in conds[pert]]] if len(pert) else np.zeros((0, len(cols)), bool)
        bs = min(config.micro_batch_size or config.batch_size, max(len(pert), 1))
        return PerturbationBatches(Xt, pert, ctrl, flags=flags, gene_ids=gene_ids, batch_size=bs, max_len=config.max_len,
                                   seed=seed, shuffle=shuffle)

    train_data = batches(train_conds, config.seed, True)
    if len(train_data.perturbed) == 0:
        raise InputError(f"{source}: none of the {len(train_conds)} training conditions has cells")
    valid_data = batches(valid_conds, config.seed + 1, False) if valid_conds else None
    if valid_data is not None and len(valid_data.perturbed) == 0:
        valid_data = None
    tcfg = config.to_train_config(len(train_data.perturbed), validate_epochs=valid_data is not None)
    log.info("perturbation: %d genes as tokens (%d unmapped), %d train pairs (%d conditions), %d valid pairs, "
             "%d steps, %d conditions to predict", len(cols), int((index < 0).sum()), len(train_data.perturbed),
             len(set(conds[train_data.perturbed])), 0 if valid_data is None else len(valid_data.perturbed),
             tcfg.max_steps, len(predict_conditions))
    # train() reads a callable without __iter__ as a factory data(epoch): a new order and new gene subsets per epoch
    state = train(model, PerturbationObjective(), train_data.for_epoch, tcfg, out_dir=out_dir, eval_data=valid_data,
                  device=device)

    ctrl_rows = np.flatnonzero(conds == CTRL)
    predicted = _predict_conditions(model, Xt[ctrl_rows], list(map(str, predict_conditions)), gene_ids=gene_ids,
                                    gene_names=names, pool_size=config.pool_size, seed=config.seed,
                                    batch_size=config.embed_batch_size, device=device)
    unflagged.update(predicted.attrs["unflagged"])
    ctrl_mean = np.asarray(X[ctrl_rows].mean(axis=0), dtype=np.float64).ravel()
    full = np.tile(ctrl_mean.astype(np.float32), (len(predicted), 1))
    full[:, cols] = predicted.to_numpy()
    predictions = pd.DataFrame(full, index=predicted.index, columns=pd.Index(adata.var_names.astype(str)))
    summary = {"step": state.step, "epoch": state.epoch, "samples": state.samples, "tokens": state.tokens,
               "resumed_from": state.resumed_from, "last_metrics": dict(state.last_metrics),
               "best_step": state.best_step, "best_valid_loss": state.best_eval_loss,
               "n_train_pairs": int(len(train_data.perturbed)),
               "n_valid_pairs": 0 if valid_data is None else int(len(valid_data.perturbed))}
    with atomic_path(out_dir / "perturbation.json") as tmp:
        tmp.write_text(json.dumps({"n_genes_used": int(len(cols)), "n_genes_unmapped": int((index < 0).sum()),
                                   "unflagged": unflagged, "train": summary, "config": dataclasses.asdict(config)},
                                  indent=1, default=str) + "\n")
    return PerturbationResult(predictions=predictions, unflagged=unflagged, n_genes_used=int(len(cols)),
                              n_genes_unmapped=int((index < 0).sum()), train=summary)

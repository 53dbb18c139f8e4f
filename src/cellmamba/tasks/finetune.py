"""What the fine-tuning tasks share: settings, the pretrained model with new heads, loaders,
the classification and adversarial objectives, and cell embeddings.

Fine-tuning reuses the pretraining loop (:func:`cellmamba.train.train`): bf16 autocast on
CUDA, checkpoints and automatic resume, metrics.csv, DDP under torchrun.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .._util import seed_all
from ..errors import InputError
from ..models import BackboneOutput, CellModel, HeadConfig
from ..models.checkpoint import WEIGHTS_NAME, load_state_dict_strict, read_weights
from ..models.heads import pool_cells
from ..models.model import INITS, check_init, read_model_config
from ..train.batches import to_device
from ..train.config import OptimConfig
from ..train.data import DataConfig, build_dataloader
from ..train.objectives import layout_kwargs
from ..train.data_collate import (MaskedGeneCollateConfig, MaskedGeneCollator, MaskedValueCollateConfig,
                                  MaskedValueCollator)
from .tokens import DatasetTokens, TokenCells

__all__ = ["FinetuneConfig", "INITS", "load_for_finetuning", "model_tokenizer", "collator_for", "train_loader",
           "ClassificationObjective", "AdversarialObjective", "ADVERSARIAL_SCHEDULES", "reversal_weight",
           "standardize_cells", "grad_reverse", "embed_cells",
           "split_train_valid", "train_valid_loaders", "pick_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig(OptimConfig):
    """Settings of one fine-tuning run (annotation or integration): the optimisation block
    (:class:`~cellmamba.train.config.OptimConfig`: epochs, lr, batch_size, micro_batch_size,
    warmup_fraction, weight_decay, seed, precision, backend) and the task's own."""

    epochs: int = 10                  # passes over the training cells (scGPT / SC-MAMBA2: 10 annotation, 30 integration)
    lr: float = 1e-4                  # peak learning rate (scGPT: 1e-4)
    seed: int = 0                     # initialisation of new heads, data order, masks, the valid split
    max_len: int = 1200               # tokens per cell (binned: CLS included); scGPT: n_genes + 1
    pooling: str = "auto"             # cell embedding: "auto" (binned: cls, rank: mean), "cls", "mean", "last"
    dropout: float = 0.2              # classifier dropout (scGPT 0.2, SC-MAMBA2 0.5)
    valid_fraction: float = 0.1       # cells held out for validation (annotation: of the reference; scGPT: 0.1)
    keep_best: bool = True            # validation every epoch, the epoch of lowest validation loss is kept (scGPT)
    mask_ratio: float = 0.4           # integration: masked values / genes (scGPT integration: 0.4)
    include_zeros: bool = True        # integration, binned: every selected unexpressed gene is a token (scGPT include_zero_gene=True)
    adversarial_weight: float = 1.0   # integration: peak weight of the discriminator's gradient reversed into the encoder (0 = reversal off)
    adversarial_schedule: str = "dann"  # integration: reversal weight over training, "dann" (0 -> weight, Ganin 2016) | "constant"
    adversarial_lr_scale: float = 100.0  # integration: the batch discriminator's learning rate / lr (it must outpace the encoder it judges)
    embed_batch_size: int = 64        # cells per forward pass when embedding / predicting
    init: str = "pretrained"          # "pretrained" weights, or "scratch": the same architecture from random init (the control)

    def __post_init__(self):
        super().__post_init__()
        check_init(self.init, where="FinetuneConfig")

        def need(ok, what):
            if not ok:
                raise InputError(f"FinetuneConfig: {what}")
        need(isinstance(self.max_len, int) and self.max_len >= 2, f"max_len must be an integer >= 2, got {self.max_len!r}")
        need(self.pooling in ("auto", "cls", "mean", "last"), f"pooling must be auto, cls, mean or last, got {self.pooling!r}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(0 <= self.valid_fraction < 1, f"valid_fraction must be in [0, 1), got {self.valid_fraction!r}")
        need(0 < self.mask_ratio < 1, f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        need(self.adversarial_weight >= 0, f"adversarial_weight must be >= 0, got {self.adversarial_weight!r}")
        need(self.adversarial_lr_scale > 0, f"adversarial_lr_scale must be > 0, got {self.adversarial_lr_scale!r}")
        need(self.adversarial_schedule in ADVERSARIAL_SCHEDULES,
             f"adversarial_schedule must be one of {ADVERSARIAL_SCHEDULES}, got {self.adversarial_schedule!r}")


def pick_device(device=None) -> torch.device:
    """``device`` as a torch.device (default: CUDA when available, else CPU); an explicit device
    this machine does not have is an InputError, never a silent fallback."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r}: not a torch device ({exc})") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or
                               (dev.index is not None and dev.index >= torch.cuda.device_count())):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise InputError(f"device {device!r} was asked for, but this machine has {have}; "
                         "leave the device out (CUDA when available, else CPU) or pass 'cpu'")
    return dev


def model_tokenizer(model) -> str:
    """The tokenizer a model reads: from a CellModel, or from a saved model directory's config."""
    if isinstance(model, (str, os.PathLike)):
        from ..models.model import read_model_config

        kind = read_model_config(model).embedding.kind
    else:
        kind = model.config.embedding.kind
    if kind not in ("binned", "rank"):
        raise InputError(f"fine-tuning reads binned or rank tokens; this model reads {kind!r}")
    return kind


def resolve_pooling(config: FinetuneConfig, tokenizer: str) -> str:
    """The pooling of ``config``: "auto" is the papers' choice, "cls" for binned tokens (scGPT,
    SC-MAMBA2) and "mean" for rank tokens (GeneMamba). For a BiMamba with merge_every="stack",
    "cls" reads each direction where it has seen the whole cell (:func:`~cellmamba.models.heads.pool_cells`)."""
    if config.pooling != "auto":
        return config.pooling
    return "cls" if tokenizer == "binned" else "mean"


def load_for_finetuning(model_dir: str | os.PathLike, heads: Mapping[str, HeadConfig], *,
                        keep_heads: tuple[str, ...] = (), backend: str = "auto", seed: int = 0,
                        init: str = "pretrained") -> CellModel:
    """The pretrained embedding + backbone of ``model_dir`` (loaded strictly) with ``heads``:
    new, freshly initialised heads, plus the pretrained heads named in ``keep_heads``.

    ``init="scratch"``: the same architecture and heads with every weight from the seeded
    initialisation instead (the weights file is not read). The new heads' weights are the same
    as with ``init="pretrained"`` and the same seed, so the two runs differ only in the
    pretrained weights."""
    check_init(init, where="load_for_finetuning")
    saved = read_model_config(model_dir).heads  # the config alone: the model is built once, below
    missing = [h for h in keep_heads if h not in saved]
    if missing:
        raise InputError(f"{model_dir}: has no head(s) {missing} to keep (it has {sorted(saved)})")
    new_heads = {name: saved[name] for name in keep_heads}
    clash = sorted(set(new_heads) & set(heads))
    if clash:
        raise InputError(f"load_for_finetuning: head name(s) {clash} are both kept and new")
    new_heads.update(heads)
    seed_all(seed)
    model = CellModel.scratch_like(model_dir, backend=backend, heads=new_heads)
    n = sum(p.numel() for p in model.parameters())
    if init == "scratch":
        log.info("the architecture of %s (%s backbone, %s tokens, %d parameters) from random init (seed %d, "
                 "no pretrained weights) with heads %s", model_dir, model.config.backbone.arch,
                 model.config.embedding.kind, n, seed, sorted(new_heads))
        return model
    state = {k: v for k, v in read_weights(Path(model_dir) / WEIGHTS_NAME).items()
             if not k.startswith("heads.") or k.split(".")[1] in keep_heads}
    fresh = {k: v for k, v in model.state_dict().items() if k.startswith("heads.") and k.split(".")[1] in heads}
    load_state_dict_strict(model, {**state, **fresh}, source=str(model_dir))
    log.info("loaded %s (%s backbone, %s tokens, %d parameters) with heads %s", model_dir,
             model.config.backbone.arch, model.config.embedding.kind, n, sorted(new_heads))
    return model


def collator_for(tokens: DatasetTokens, *, mask_ratio: float, include_zeros: bool, seed: int):
    """The collator of the pretraining objective for these tokens; ``mask_ratio=0`` gives
    plain batches (nothing hidden) for classification and embedding."""
    if tokens.tokenizer == "binned":
        zeros = int(tokens.measured.sum()) if include_zeros else 0
        cfg = MaskedValueCollateConfig(mask_ratio=mask_ratio, n_zeros=zeros, max_len=tokens.max_len if zeros else None)
        return MaskedValueCollator(cfg, seed=seed)
    return MaskedGeneCollator(MaskedGeneCollateConfig(mask_ratio=mask_ratio), n_genes=len(tokens.measured), seed=seed)


def train_loader(data: TokenCells, collator, *, batch_size: int, seed: int):
    """Batches of ``batch_size`` cells in a plain seeded shuffle, new each epoch; the last,
    incomplete batch is kept as a smaller batch (one process: no cell is repeated).

    No length bucketing (``bucket_batches=0``), unlike pretraining: a cell's length (its number
    of expressed genes) tracks its cell type and batch, so length-sorted batches would hold cells
    of one type (on a dataset the size of pbmc68k_reduced, a batch's majority type was 40% of its
    cells on average and up to 66%); a fine-tuning dataset is small, so the padding a plain
    shuffle costs is small too."""
    return build_dataloader(data, collator, DataConfig(batch_size=min(batch_size, len(data)), shuffle=True,
                                                       drop_last=False, seed=seed, bucket_batches=0))


def train_valid_loaders(tokens: DatasetTokens, train_cells: np.ndarray, valid_cells: np.ndarray, collator,
                        config: FinetuneConfig):
    """(training loader, validation loader or None where no cell validates, the loop's settings with
    an evaluation after every epoch) for fine-tuning on ``train_cells`` of ``tokens``.

    Both come from :func:`train_loader`: the validation loader yields every validation cell once
    (a smaller last batch, no wrap-padding), so the means over cells of
    :func:`~cellmamba.train.evaluate` count each validation cell once."""
    settings = config.to_train_config(len(train_cells), validate_epochs=len(valid_cells) > 0)
    loader = train_loader(TokenCells(tokens, train_cells), collator, batch_size=settings.batch_size, seed=config.seed)
    valid = (train_loader(TokenCells(tokens, valid_cells), collator, batch_size=settings.batch_size, seed=config.seed)
             if len(valid_cells) else None)
    return loader, valid, settings


def split_train_valid(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``labels`` for training and validation: a seeded random ``fraction`` held
    out (scGPT: ``train_test_split(test_size=0.1, shuffle=True)``, not stratified)."""
    n = len(labels)
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_valid = int(round(fraction * n)) if n > 1 else 0
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def grad_reverse(x: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-weight`` backward (Ganin & Lempitsky 2015)."""
    return _GradReverse.apply(x, float(weight))


def _model_forward(model, batch: Mapping[str, Any]):
    values = batch.get("values")
    kw = layout_kwargs(batch)  # the collators' word on padding: the model need not wait for the device to check
    if values is not None and "value_mask" in batch:
        return model(batch["input_ids"], values, attention_mask=batch["attention_mask"], value_mask=batch["value_mask"],
                     **kw)
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], **kw)


class ClassificationObjective:
    """Cross-entropy of ``model.heads["classifier"]`` against the cells' label codes.

    ``labels``: int64 (n_dataset_cells,), looked up by the batch's ``cell_index``.
    Metrics: ``accuracy``."""

    def __init__(self, labels: np.ndarray):
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def __call__(self, model, batch):
        out = _model_forward(model, batch)
        logits = model.heads["classifier"](out).float()
        y = self.labels.to(logits.device)[batch["cell_index"]]
        loss = F.cross_entropy(logits, y)
        return loss, {"accuracy": float((logits.argmax(-1) == y).float().mean())}


#: schedules of the reversal weight over training progress p (optimizer step / steps), see :func:`reversal_weight`
ADVERSARIAL_SCHEDULES = ("constant", "dann")


def reversal_weight(progress: float, weight: float, schedule: str = "dann") -> float:
    """The weight of the gradient reversed into the encoder at training ``progress`` p in [0, 1].

    "constant": ``weight`` from the first step. "dann": ``weight * (2 / (1 + exp(-10 p)) - 1)``
    (Ganin et al. 2016, section 5.2.2): 0 at the first step, half of ``weight`` at p = 0.11,
    ``weight`` (to 1e-4) from p = 1, so the discriminator learns the batches before the encoder
    is pushed to hide them.
    """
    if schedule not in ADVERSARIAL_SCHEDULES:
        raise InputError(f"adversarial schedule must be one of {ADVERSARIAL_SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return float(weight)
    p = min(max(float(progress), 0.0), 1.0)
    return float(weight) * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


def standardize_cells(emb: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each dimension of ``emb`` (B, d) centred and scaled over the batch's cells: (B, d).

    The statistics are the batch's own (as a batch norm in training mode, without running
    statistics or affine parameters) and gradients flow through them. A final-norm cell
    embedding shares a large component across cells (its spread between cells is ~0.1 of its
    size at initialisation), which a discriminator trained at a fine-tuning learning rate does
    not learn past; standardised, the differences between cells are what it reads.
    """
    x = emb.float()
    mean = x.mean(0, keepdim=True)
    var = x.var(0, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


class AdversarialObjective:
    """The recipe's self-supervised loss + a batch discriminator behind gradient reversal (DANN).

    ``loss = ssl(model, batch) + CE(heads["batch"](standardize(grad_reverse(embedding, lambda))), batch)``:
    the discriminator minimises its cross-entropy as any classifier (its own parameters get the
    plain gradient); only the gradient flowing from it into the encoder is reversed and scaled
    by ``lambda`` (scGPT's DAR / SC-MAMBA2's adversarial batch correction). One forward pass
    serves both terms. ``lambda`` follows ``schedule`` (:func:`reversal_weight`) from 0 to
    ``weight`` over training; the loop reports the step through :meth:`set_step`.

    ``weight=0`` turns the reversal off but still trains the discriminator: the encoder is then
    trained by the self-supervised loss alone and ``adv_loss`` measures how much batch
    information its embedding holds (below ln(n_batches): the batches are told apart).
    The discriminator reads the embedding standardised over the batch's cells
    (:func:`standardize_cells`).

    Evaluation (``model.training`` False): the returned loss is the self-supervised term only,
    so ``keep_best`` chooses the epoch by the recipe's objective and never rewards one in which
    the discriminator wins; ``adv_loss`` and ``batch_acc`` are still reported.

    Metrics: ``ssl_loss``, the recipe's, ``adv_loss``, ``batch_acc``, ``adv_lambda`` (the
    reversal weight of the step).
    """

    def __init__(self, ssl, batches: np.ndarray, *, weight: float, pooling: str, schedule: str = "dann"):
        if schedule not in ADVERSARIAL_SCHEDULES:
            raise InputError(f"AdversarialObjective: schedule must be one of {ADVERSARIAL_SCHEDULES}, got {schedule!r}")
        if not weight >= 0:
            raise InputError(f"AdversarialObjective: weight must be >= 0, got {weight!r}")
        self.ssl, self.weight, self.pooling, self.schedule = ssl, float(weight), pooling, schedule
        self.batches = torch.as_tensor(np.asarray(batches, dtype=np.int64))
        self.progress = 0.0

    def set_step(self, step: int, max_steps: int) -> None:
        """Called by the training loop before optimizer step ``step`` (0-based) of ``max_steps``."""
        self.progress = step / max(max_steps - 1, 1)

    @property
    def reversal(self) -> float:
        """The weight of the reversed gradient at the current step."""
        return reversal_weight(self.progress, self.weight, self.schedule)

    def __call__(self, model, batch):
        out = _model_forward(model, batch)
        ssl, metrics = self.ssl.loss_from_output(model, out, batch)
        lam = self.reversal
        emb = standardize_cells(grad_reverse(pool_cells(out, self.pooling), lam))
        logits = model.heads["batch"](_pooled_output(emb)).float()
        y = self.batches.to(logits.device)[batch["cell_index"]]
        adv = F.cross_entropy(logits, y)
        metrics = {"ssl_loss": ssl.detach(), **metrics, "adv_loss": adv.detach(),
                   "batch_acc": (logits.argmax(-1) == y).float().mean(), "adv_lambda": lam}
        return (ssl + adv if model.training else ssl), metrics


def _pooled_output(emb: torch.Tensor) -> BackboneOutput:
    """A BackboneOutput of one token per cell that is already the cell's vector, emb: (B, d) ->
    hidden (B, 1, d), ``cls`` None: a cell head with any pooling reads ``emb`` unchanged."""
    return BackboneOutput(hidden=emb.unsqueeze(1), attention_mask=torch.ones(emb.shape[0], 1, dtype=torch.bool,
                                                                           device=emb.device))


@torch.no_grad()
def embed_cells(model: CellModel, data: TokenCells, collator, *, pooling: str, batch_size: int = 64,
                device=None, classifier: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Cell embeddings (and classifier logits) of every cell of ``data``, in its order.

    Returns
    -------
    embeddings : float32 (n_cells, d_model)
    logits : float32 (n_cells, n_classes), or None unless ``classifier``
    """
    from ..runlog import progress as _bar

    from ..train.precision import autocast, resolve_precision

    device = pick_device(device)
    model = model.to(device).eval()
    precision = resolve_precision("auto", device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collator)
    embs, logits = [], []
    for batch in _bar(loader, desc="embed", disable=not progress, dynamic_ncols=True):
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = _model_forward(model, batch)
            embs.append(pool_cells(out, pooling).float().cpu())
            if classifier:
                logits.append(model.heads["classifier"](out).float().cpu())
    emb = torch.cat(embs).numpy() if embs else np.zeros((0, model.config.backbone.d_model), np.float32)
    return emb.astype(np.float32), (torch.cat(logits).numpy() if classifier and logits else None)


def label_codes(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    cat = pd.Categorical(values.astype(str))
    return cat.codes.astype(np.int64), list(cat.categories)

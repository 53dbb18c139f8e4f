"""Pretraining objectives: ``objective(model, batch) -> (loss, metrics)`` over the batch dicts of
docs/architecture.md ("Training batches"), one per recipe (issue #4, section 1).

| name | recipe | batch (collator) | loss |
|---|---|---|---|
| ``masked_value`` | scmamba2 | MaskedValueCollator | MSE of a ValueRegressionHead on the merged states, at ``value_mask`` positions only |
| ``masked_gene`` | genemamba (a) | MaskedGeneCollator | cross-entropy over the vocabulary on the merged states, ``labels`` -100 ignored |
| ``next_token`` | genemamba (b) | NextTokenCollator | forward state i -> token i+1, reverse state i -> token i-1, from the states *before* the merge; mean of the two |
| ``genemamba`` | genemamba | either of the two above | language-like loss (``lm``) + ``pathway_weight`` x pathway-aware InfoNCE on the gene embeddings |
| ``contrastive`` | scmamba | paired towers (see :class:`ContrastiveObjective`) | symmetric InfoNCE + ``cosine_weight`` x mean(1 - cos) |

Leak-free (DESIGN.md, Compute). A bidirectional model's merged state at position i has seen
every token, so it may never predict a token of its own input. ``masked_gene`` hides the
targets in the input (``<mask>``); ``next_token`` reads the direction-wise causal states
(:func:`~cellmamba.models.heads.next_token_logits`), which a Transformer or a BiMamba with
``merge_every="layer"`` does not have (a clear InputError). The Transformer peers train with the
objective of the recipe they are compared with; for genemamba that is ``lm="masked_gene"``.
tests/unit/test_objectives.py trains on structureless random sequences: the loss stays near
log(vocabulary) for both objectives and falls far below it for a deliberately leaky variant.

Pure loss functions (:func:`masked_mse`, :func:`shift_targets`, :func:`info_nce`,
:func:`symmetric_info_nce`, :func:`cosine_regulariser`) are public so they can be tested
against hand-computed cases. Losses are computed in float32 whatever the autocast dtype.
Masking ratios belong to the collators (:mod:`cellmamba.train.data_collate`), not here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError
from ..models.heads import next_token_logits
from ..vocab import N_SPECIAL, Vocabulary
from .pathways import GeneSets, load_gene_sets

__all__ = [
    "IGNORE_INDEX", "LM_OBJECTIVES", "OBJECTIVES", "RECIPE_OBJECTIVES",
    "MaskedValueObjectiveConfig", "MaskedGeneObjectiveConfig", "NextTokenConfig", "PathwayContrastiveConfig",
    "GeneMambaConfig", "ContrastiveConfig",
    "masked_mse", "shift_targets", "info_nce", "symmetric_info_nce", "cosine_regulariser", "contrastive_loss",
    "gene_embedding_table",
    "MaskedValueObjective", "MaskedGeneObjective", "NextTokenObjective", "PathwayContrastiveLoss",
    "GeneMambaObjective", "ContrastiveObjective", "build_objective",
]

IGNORE_INDEX = -100  # labels ignored by the losses (torch cross_entropy's default; the collators' IGNORE_INDEX)

#: the language-like objectives of genemamba (DESIGN.md options a and b)
LM_OBJECTIVES = ("next_token", "masked_gene")

#: metric name -> value: 0-d tensors on the batch's device (read by the training loop once per step,
#: so an objective never waits for the GPU), or Python numbers
Metrics = dict[str, "torch.Tensor | float"]


def _bad(owner: str, msg: str):
    raise InputError(f"{owner}: {msg}")


def _check_positive(owner: str, name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not np.isfinite(value):
        _bad(owner, f"{name} must be a finite number > 0, got {value!r}")


def _check_nonneg(owner: str, name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or not np.isfinite(value):
        _bad(owner, f"{name} must be a finite number >= 0, got {value!r}")


def _check_name(owner: str, name: str, value) -> None:
    if not isinstance(value, str) or not value:
        _bad(owner, f"{name} must be a non-empty string, got {value!r}")


# ---------------------------------------------------------------------------------------------
# configs (frozen; built from the workflow's params by build_objective)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskedValueObjectiveConfig:
    """scmamba2: masked expression-value prediction."""

    head: str = "value"  # name of the model's value_regression head (model.heads[head])

    def __post_init__(self):
        _check_name("MaskedValueObjectiveConfig", "head", self.head)


@dataclass(frozen=True)
class MaskedGeneObjectiveConfig:
    """genemamba option (a): masked-gene prediction on the merged states."""

    head: str = "gene"  # name of the model's token_classification head (n_out = vocabulary size)

    def __post_init__(self):
        _check_name("MaskedGeneObjectiveConfig", "head", self.head)


@dataclass(frozen=True)
class NextTokenConfig:
    """genemamba option (b): next-token prediction per direction, before the merge."""

    head: str = "gene"  # token_classification head shared by both directions
    predict_special: bool = False  # also predict special tokens (<cls>, <eos>); off: <cls> at position 0 is a free target

    def __post_init__(self):
        _check_name("NextTokenConfig", "head", self.head)
        if not isinstance(self.predict_special, bool):
            _bad("NextTokenConfig", f"predict_special must be true or false, got {self.predict_special!r}")


@dataclass(frozen=True)
class PathwayContrastiveConfig:
    """Pathway-aware InfoNCE on the gene-id embedding table (GeneMamba's auxiliary loss)."""

    temperature: float = 0.1  # InfoNCE temperature on cosine similarities (our choice; the paper gives none we could pin)
    n_pathways: int = 64  # pathways sampled per step, one (anchor, positive) gene pair each; the other pairs are negatives

    def __post_init__(self):
        _check_positive("PathwayContrastiveConfig", "temperature", self.temperature)
        if not isinstance(self.n_pathways, int) or isinstance(self.n_pathways, bool) or self.n_pathways < 2:
            _bad("PathwayContrastiveConfig", f"n_pathways must be an integer >= 2, got {self.n_pathways!r}")


@dataclass(frozen=True)
class GeneMambaConfig:
    """genemamba: language-like objective + pathway-aware contrastive loss on gene embeddings."""

    lm: str = "next_token"  # "next_token" (option b, default: GeneMamba's own objective) | "masked_gene" (option a; Transformer peers)
    head: str = "gene"  # token_classification head of the language-like objective
    predict_special: bool = False  # next_token: also predict special tokens
    pathway_weight: float = 0.1  # weight of the pathway loss in the sum; 0 = off (no gene sets needed)
    pathway_temperature: float = 0.1  # InfoNCE temperature of the pathway loss
    pathway_n: int = 64  # pathways sampled per step
    min_set_genes: int = 2  # gene sets with fewer genes in the vocabulary are dropped (when build_objective maps GMT files)

    def __post_init__(self):
        if self.lm not in LM_OBJECTIVES:
            _bad("GeneMambaConfig", f"lm must be one of {LM_OBJECTIVES}, got {self.lm!r}")
        _check_name("GeneMambaConfig", "head", self.head)
        _check_nonneg("GeneMambaConfig", "pathway_weight", self.pathway_weight)
        _check_positive("GeneMambaConfig", "pathway_temperature", self.pathway_temperature)
        if not isinstance(self.pathway_n, int) or isinstance(self.pathway_n, bool) or self.pathway_n < 2:
            _bad("GeneMambaConfig", f"pathway_n must be an integer >= 2, got {self.pathway_n!r}")
        if not isinstance(self.min_set_genes, int) or isinstance(self.min_set_genes, bool) or self.min_set_genes < 2:
            _bad("GeneMambaConfig", f"min_set_genes must be an integer >= 2, got {self.min_set_genes!r}")


@dataclass(frozen=True)
class ContrastiveConfig:
    """scmamba: symmetric InfoNCE between two modality towers + cosine regulariser."""

    temperature: float = 0.1  # InfoNCE temperature on cosine similarities
    cosine_weight: float = 0.1  # weight of mean(1 - cos(z_a_i, z_b_i)); 0 = off
    modalities: tuple[str, str] = ("rna", "other")  # tower names: model.towers[m], batch keys "{m}_values" / "{m}_input_ids", "{m}_attention_mask"
    head: str = "projection"  # projection head of each tower (tower.heads[head])
    # encode the batch in chunks of this many cells, each recomputed in the backward pass
    # (activation checkpointing): the InfoNCE still contrasts the whole batch and the gradient is
    # the whole batch's, in the activation memory of one chunk, for one more forward pass (None = one pass)
    chunk_cells: int | None = None

    def __post_init__(self):
        if self.chunk_cells is not None and not (isinstance(self.chunk_cells, int) and self.chunk_cells >= 1):
            _bad("ContrastiveConfig", f"chunk_cells must be None or an integer >= 1, got {self.chunk_cells!r}")
        _check_positive("ContrastiveConfig", "temperature", self.temperature)
        _check_nonneg("ContrastiveConfig", "cosine_weight", self.cosine_weight)
        mods = tuple(self.modalities) if isinstance(self.modalities, (list, tuple)) else None
        if mods is None or len(mods) != 2 or not all(isinstance(m, str) and m for m in mods) or mods[0] == mods[1]:
            _bad("ContrastiveConfig", f"modalities must be two different names, got {self.modalities!r}")
        object.__setattr__(self, "modalities", mods)
        _check_name("ContrastiveConfig", "head", self.head)


# ---------------------------------------------------------------------------------------------
# pure losses
# ---------------------------------------------------------------------------------------------
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked positions only.

    Parameters
    ----------
    pred, target : (batch, seq_len) float
    mask : (batch, seq_len) bool
        True where the value counts (hidden from the model).

    Returns
    -------
    Scalar float32 tensor: ``sum(mask * (pred - target)**2) / sum(mask)``; 0 (still attached to
    ``pred``'s graph) when nothing is masked. Values outside the mask may be anything (NaN included).
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise InputError(f"masked_mse: pred, target and mask must have one shape, got {tuple(pred.shape)}, "
                         f"{tuple(target.shape)}, {tuple(mask.shape)}")
    mask = mask.bool()
    diff = torch.where(mask, pred.float() - torch.where(mask, target.float(), 0.0), 0.0)
    return (diff * diff).sum() / mask.sum().clamp(min=1)


def layout_kwargs(batch: Mapping[str, Any]) -> dict:
    """The model's ``packing=`` keyword where the batch has a plan (pretraining with pack: true), and
    its ``padded=`` where the collator says whether the batch holds padding (no check of the mask,
    no host wait for it)."""
    out = {"packing": batch["packing"]} if batch.get("packing") is not None else {}
    if isinstance(batch.get("padded"), bool):  # a packed forward pass does not read it
        out["padded"] = batch["padded"]
    return out


def shift_targets(labels: torch.Tensor, attention_mask: torch.Tensor, *,
                  predict_special: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of the two directions of a next-token objective.

    Parameters
    ----------
    labels : (batch, seq_len) int64
        Token ids, ``IGNORE_INDEX`` at padding (NextTokenCollator's ``labels``).
    attention_mask : (batch, seq_len) bool
        True at real tokens; a padded position never predicts (its states are zeros).
    predict_special
        Keep special tokens (id < N_SPECIAL) as targets; by default they are ignored.

    Returns
    -------
    next_targets : (batch, seq_len)
        ``labels[:, i + 1]`` at position i (IGNORE_INDEX at the last position and at padding).
    prev_targets : (batch, seq_len)
        ``labels[:, i - 1]`` at position i (IGNORE_INDEX at position 0 and at padding).
    """
    if labels.shape != attention_mask.shape or labels.dim() != 2:
        raise InputError(f"shift_targets: labels and attention_mask must both be (batch, seq_len), got "
                         f"{tuple(labels.shape)} and {tuple(attention_mask.shape)}")
    lab = labels.long()
    if not predict_special:
        lab = lab.masked_fill((lab >= 0) & (lab < N_SPECIAL), IGNORE_INDEX)
    ign = torch.full_like(lab[:, :1], IGNORE_INDEX)
    nxt = torch.cat([lab[:, 1:], ign], dim=1)
    prv = torch.cat([ign, lab[:, :-1]], dim=1)
    real = attention_mask.bool()
    return nxt.masked_fill(~real, IGNORE_INDEX), prv.masked_fill(~real, IGNORE_INDEX)


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over non-ignored targets (0 attached to the graph when none), #targets, #correct
    (0-d tensors: nothing here waits for the device)."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat = targets.reshape(-1)
    keep = flat != IGNORE_INDEX
    n = keep.sum()
    loss = F.cross_entropy(flat_logits, flat, ignore_index=IGNORE_INDEX, reduction="sum") / n.clamp_min(1)
    correct = ((flat_logits.argmax(-1) == flat) & keep).sum()
    return loss, n, correct


def info_nce(queries: torch.Tensor, keys: torch.Tensor, *, temperature: float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: query i's positive is key i, the other keys are its negatives.

    Parameters
    ----------
    queries, keys : (n, d)
        Compared by cosine similarity (both L2-normalised here).
    temperature
        Logits are ``cos(q_i, k_j) / temperature``.
    exclude : (n, n) bool, optional
        True where key j is not a negative of query i (e.g. a second member of i's pathway);
        the diagonal is always kept.

    Returns
    -------
    Scalar: ``mean_i -log(exp(s_ii) / sum_{j kept} exp(s_ij))``.
    """
    if queries.dim() != 2 or queries.shape != keys.shape or queries.shape[0] < 1:
        raise InputError(f"info_nce: queries and keys must be (n, d) of one shape, got {tuple(queries.shape)} "
                         f"and {tuple(keys.shape)}")
    _check_positive("info_nce", "temperature", temperature)
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    logits = q @ k.T / temperature
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    if exclude is not None:
        if exclude.shape != (n, n):
            raise InputError(f"info_nce: exclude must be ({n}, {n}), got {tuple(exclude.shape)}")
        logits = logits.masked_fill(exclude.to(logits.device).bool() & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


def symmetric_info_nce(z_a: torch.Tensor, z_b: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """CLIP's loss: ``(info_nce(z_a, z_b) + info_nce(z_b, z_a)) / 2``; z_a, z_b: (batch, d), row i paired."""
    return 0.5 * (info_nce(z_a, z_b, temperature=temperature) + info_nce(z_b, z_a, temperature=temperature))


def cosine_regulariser(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 - cos(z_a_i, z_b_i))`` for z_a, z_b: (batch, d); 0 when the pairs are aligned."""
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise InputError(f"cosine_regulariser: z_a and z_b must be (batch, d) of one shape, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
    return (1.0 - F.cosine_similarity(z_a.float(), z_b.float(), dim=-1)).mean()


def contrastive_loss(z_a: torch.Tensor, z_b: torch.Tensor, *, temperature: float,
                     cosine_weight: float) -> tuple[torch.Tensor, Metrics]:
    """scMamba's loss between paired cell embeddings of two modalities.

    Parameters
    ----------
    z_a, z_b : (batch, d)
        Row i of both is the same cell (or matched cells).
    temperature
        InfoNCE temperature.
    cosine_weight
        Weight of :func:`cosine_regulariser`.

    Returns
    -------
    loss
        ``symmetric_info_nce + cosine_weight * cosine_regulariser`` (scalar).
    metrics
        ``infonce``, ``cosine_reg``, ``retrieval_acc`` (fraction of rows of z_a whose most similar
        row of z_b is its own pair).
    """
    if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 2:
        raise InputError(f"contrastive_loss: z_a and z_b must be (batch >= 2, d) of one shape, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")
    nce = symmetric_info_nce(z_a, z_b, temperature=temperature)
    reg = cosine_regulariser(z_a, z_b)
    with torch.no_grad():
        sim = F.normalize(z_a.float(), dim=-1) @ F.normalize(z_b.float(), dim=-1).T
        acc = (sim.argmax(-1) == torch.arange(sim.shape[0], device=sim.device)).float().mean()
    return nce + cosine_weight * reg, {"infonce": nce.detach(), "cosine_reg": reg.detach(),
                                       "retrieval_acc": acc}


# ---------------------------------------------------------------------------------------------
# objectives
# ---------------------------------------------------------------------------------------------
def _need(batch: Mapping[str, Any], owner: str, *keys: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise InputError(f"{owner}: the batch lacks {missing} (has {sorted(batch)}); is it the right collator?")


def _head(model: nn.Module, name: str, owner: str) -> nn.Module:
    heads = getattr(model, "heads", None)
    if heads is None or name not in heads:
        have = [] if heads is None else list(heads.keys())
        raise InputError(f"{owner}: the model has no head {name!r} (heads: {have}); add it to CellModelConfig.heads")
    return heads[name]


class MaskedValueObjective:
    """scmamba2: predict the hidden expression values from the merged states.

    Batch (MaskedValueCollator): ``input_ids``, ``values``, ``attention_mask``, ``value_mask``,
    ``value_targets``. Loss: :func:`masked_mse` of ``model.heads[head]`` (a ValueRegressionHead,
    (batch, seq_len)) against ``value_targets`` at ``value_mask & attention_mask``.
    Metrics: ``mse``, ``n_masked``.
    """

    def __init__(self, config: MaskedValueObjectiveConfig = MaskedValueObjectiveConfig()):
        self.config = config

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        _need(batch, "masked_value objective", "input_ids", "values", "attention_mask", "value_mask", "value_targets")
        out = model(batch["input_ids"], batch["values"], attention_mask=batch["attention_mask"],
                    value_mask=batch["value_mask"], **layout_kwargs(batch))
        return self.loss_from_output(model, out, batch)

    def loss_from_output(self, model: nn.Module, out, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        """The loss given the model's output on ``batch`` (for objectives that reuse the forward pass)."""
        pred = _head(model, self.config.head, "masked_value objective")(out)
        mask = batch["value_mask"].bool() & batch["attention_mask"].bool()
        loss = masked_mse(pred, batch["value_targets"], mask)
        return loss, {"mse": loss.detach(), "n_masked": mask.sum()}


class MaskedGeneObjective:
    """genemamba option (a): predict the genes hidden by ``<mask>`` from the merged states.

    Batch (MaskedGeneCollator): ``input_ids`` (``<mask>`` at hidden genes), ``attention_mask``,
    ``labels`` (-100 except at hidden genes), optionally ``target_index`` (the flat positions of the
    targets; without it they are found by a boolean selection, a host wait on a GPU). Loss: cross-entropy of ``model.heads[head]``
    (batch, seq_len, vocab_size) over the non-ignored labels. Leak-free because the answers are
    not in the input; works for every backbone (the Transformer peers included).
    Metrics: ``accuracy``, ``n_targets``.
    """

    def __init__(self, config: MaskedGeneObjectiveConfig = MaskedGeneObjectiveConfig()):
        self.config = config

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        _need(batch, "masked_gene objective", "input_ids", "attention_mask", "labels")
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], **layout_kwargs(batch))
        return self.loss_from_output(model, out, batch)

    def loss_from_output(self, model: nn.Module, out, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        """The loss given the model's output on ``batch`` (for objectives that reuse the forward pass)."""
        head = _head(model, self.config.head, "masked_gene objective")
        labels = batch["labels"].masked_fill(~batch["attention_mask"].bool(), IGNORE_INDEX)
        # logits only where there is a target: (n_targets, vocab), not (B, L, vocab)
        index = batch.get("target_index")
        if index is not None:  # the collator's positions: their number is known on the host, no wait
            hidden = out.hidden.reshape(-1, out.hidden.shape[-1]).index_select(0, index)
            targets = labels.reshape(-1).index_select(0, index)
        else:  # a boolean selection: the host waits for the device to count it
            sel = labels != IGNORE_INDEX
            hidden, targets = out.hidden[sel], labels[sel]
        loss, n, correct = _ce(head.logits(hidden), targets)
        return loss, {"accuracy": correct / n.clamp_min(1), "n_targets": n}


class NextTokenObjective:
    """genemamba option (b): each direction predicts from its own causal states, before the merge.

    Forward state i (tokens <= i) predicts token i + 1; reverse state i (tokens >= i) predicts
    token i - 1; both through the same ``model.heads[head]`` (:func:`~cellmamba.models.heads.next_token_logits`).
    Loss: the mean of the two directions' mean cross-entropies (a unidirectional Mamba: forward only).

    Batch (NextTokenCollator): ``input_ids``, ``attention_mask``, ``labels`` (= input_ids, -100 at padding).
    Metrics: ``loss_next``, ``loss_prev`` (when bidirectional), ``accuracy``, ``n_targets``.

    Raises
    ------
    InputError
        For a model without direction-wise states (Transformer; BiMamba with merge_every="layer"):
        there next-token prediction would read the answer. Use ``masked_gene`` there.
    """

    def __init__(self, config: NextTokenConfig = NextTokenConfig()):
        self.config = config

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        owner = "next_token objective"
        _need(batch, owner, "input_ids", "attention_mask", "labels")
        head = _head(model, self.config.head, owner)
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], **layout_kwargs(batch))
        try:
            next_logits, prev_logits = next_token_logits(head, out)
        except InputError as exc:
            raise InputError(f"{owner}: {exc}") from exc
        nxt, prv = shift_targets(batch["labels"], batch["attention_mask"], predict_special=self.config.predict_special)
        loss_n, n_n, c_n = _ce(next_logits, nxt)
        metrics = {"loss_next": loss_n.detach()}
        if prev_logits is None:
            loss, n, correct = loss_n, n_n, c_n
        else:
            loss_p, n_p, c_p = _ce(prev_logits, prv)
            loss, n, correct = 0.5 * (loss_n + loss_p), n_n + n_p, c_n + c_p
            metrics["loss_prev"] = loss_p.detach()
        metrics.update(accuracy=correct / n.clamp_min(1), n_targets=n)
        return loss, metrics


def gene_embedding_table(model: nn.Module) -> torch.Tensor:
    """The model's gene-id embedding table, (vocab_size, d_model): row t embeds token id t
    (``model.embed.gene.weight`` of a rank or binned :class:`~cellmamba.models.model.CellModel`)."""
    embed = getattr(model, "embed", None)
    gene = getattr(embed, "gene", None)
    if not isinstance(gene, nn.Embedding):
        raise InputError("pathway loss: the model has no gene-id embedding table (model.embed.gene); it needs a "
                         "rank or binned CellModel")
    return gene.weight


class PathwayContrastiveLoss:
    """Pathway-aware InfoNCE on gene embeddings: genes sharing a pathway are pulled together.

    Each call samples ``n_pathways`` distinct sets (all of them when there are fewer) and, from
    each, two distinct member genes: an anchor and its positive. Anchor i's negatives are the
    positives of the other sampled pathways, except genes that are members of anchor i's own
    pathway (no false negatives); the loss is symmetric (anchors -> positives and back), on
    cosine similarities divided by ``temperature``. Sampling uses the global torch RNG (CPU),
    which the training checkpoints capture, so a resumed run draws the same pathways.

    Parameters
    ----------
    gene_sets
        Sets as token ids (:func:`~cellmamba.train.pathways.load_gene_sets`).
    config
        Temperature and pathways per step.
    """

    def __init__(self, gene_sets: GeneSets, config: PathwayContrastiveConfig = PathwayContrastiveConfig()):
        if not isinstance(gene_sets, GeneSets) or len(gene_sets) < 2:
            raise InputError(f"pathway loss: needs GeneSets with at least 2 sets, got "
                             f"{len(gene_sets) if isinstance(gene_sets, GeneSets) else type(gene_sets).__name__}")
        self.config = config
        self.gene_sets = gene_sets
        sizes = np.array([m.shape[0] for m in gene_sets.members], dtype=np.int64)
        self._flat = torch.from_numpy(np.concatenate(gene_sets.members).astype(np.int64))
        self._offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
        self._sizes = torch.from_numpy(sizes)
        self.max_token = int(self._flat.max())

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw one step's pairs: ``(set_index, anchor, positive)``, each (n,) int64 on the CPU."""
        n_sets = len(self.gene_sets)
        n = min(self.config.n_pathways, n_sets)
        k = torch.randperm(n_sets)[:n]
        s = self._sizes[k]
        i = (torch.rand(n, dtype=torch.float64) * s).long().clamp(max=s - 1)
        j = (torch.rand(n, dtype=torch.float64) * (s - 1)).long().clamp(max=s - 2)
        j = j + (j >= i).long()  # a different member
        base = self._offsets[k]
        return k, self._flat[base + i], self._flat[base + j]

    def _members_of(self, sets: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
        """(n, n) bool: genes[j] is a member of set sets[i]."""
        out = np.zeros((sets.shape[0], genes.shape[0]), dtype=bool)
        g = genes.numpy()
        for r, k in enumerate(sets.tolist()):
            members = self.gene_sets.members[k]
            pos = np.searchsorted(members, g).clip(max=members.shape[0] - 1)
            out[r] = members[pos] == g
        return torch.from_numpy(out)

    def __call__(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """Loss on an embedding table.

        Parameters
        ----------
        embeddings : (vocab_size, d)
            Row t embeds token id t (e.g. :func:`gene_embedding_table`).

        Returns
        -------
        loss
            Scalar.
        metrics
            ``pathway_loss``, ``pathway_pos_cos`` (mean cosine of the positive pairs).
        """
        if embeddings.dim() != 2 or embeddings.shape[0] <= self.max_token:
            raise InputError(f"pathway loss: the gene sets hold token id {self.max_token}, but the embedding table "
                             f"is {tuple(embeddings.shape)}; were the sets mapped with this model's vocabulary?")
        k, anchor, positive = self.sample()
        dev = embeddings.device
        za, zp = embeddings[anchor.to(dev)], embeddings[positive.to(dev)]
        t = self.config.temperature
        loss = 0.5 * (info_nce(za, zp, temperature=t, exclude=self._members_of(k, positive))
                      + info_nce(zp, za, temperature=t, exclude=self._members_of(k, anchor)))
        with torch.no_grad():
            pos_cos = F.cosine_similarity(za.float(), zp.float(), dim=-1).mean()
        return loss, {"pathway_loss": loss.detach(), "pathway_pos_cos": pos_cos}


class GeneMambaObjective:
    """genemamba: ``lm + pathway_weight * pathway`` (the language-like loss on the batch plus the
    pathway-aware InfoNCE on the model's gene embedding table).

    Default ``lm="next_token"`` (DESIGN.md option b): it is the objective GeneMamba itself
    pretrains with, and every position of every cell is a target in both directions (masking
    gives a target at ~15% of the positions), while the direction-wise states make it leak-free.
    ``lm="masked_gene"`` (option a) is the only choice for backbones without direction-wise states,
    so a genemamba-vs-Transformer comparison runs both with it. The batch must come from the
    matching collator (NextTokenCollator / MaskedGeneCollator).

    Metrics: those of the language-like objective, ``lm_loss``, and with the pathway loss on
    ``pathway_loss`` and ``pathway_pos_cos``.
    """

    def __init__(self, config: GeneMambaConfig = GeneMambaConfig(), gene_sets: GeneSets | None = None):
        self.config = config
        if config.lm == "next_token":
            self.lm = NextTokenObjective(NextTokenConfig(head=config.head, predict_special=config.predict_special))
        else:
            self.lm = MaskedGeneObjective(MaskedGeneObjectiveConfig(head=config.head))
        self.pathway = None
        if config.pathway_weight > 0:
            if gene_sets is None:
                raise InputError(f"genemamba objective: pathway_weight={config.pathway_weight} needs gene sets "
                                 "(GMT paths and a vocabulary, or GeneSets); set pathway_weight: 0 to train without")
            self.pathway = PathwayContrastiveLoss(gene_sets, PathwayContrastiveConfig(
                temperature=config.pathway_temperature, n_pathways=config.pathway_n))

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        loss, metrics = self.lm(model, batch)
        metrics["lm_loss"] = loss.detach()
        if self.pathway is not None:
            p_loss, p_metrics = self.pathway(gene_embedding_table(model))
            loss = loss + self.config.pathway_weight * p_loss
            metrics.update(p_metrics)
        return loss, metrics


Encoder = Callable[[nn.Module, Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]]


def _tower_embeddings(model: nn.Module, batch: Mapping[str, Any], config: ContrastiveConfig):
    towers = getattr(model, "towers", None)
    zs = []
    for m in config.modalities:
        if towers is None or m not in towers:
            have = [] if towers is None else list(towers.keys())
            raise InputError(f"contrastive objective: the model has no tower {m!r} (model.towers: {have})")
        tower = towers[m]
        head = _head(tower, config.head, f"contrastive objective, tower {m!r}")
        if f"{m}_input_ids" not in batch:
            _need(batch, "contrastive objective", f"{m}_values")
        keys = [k for k in (f"{m}_input_ids", f"{m}_values", f"{m}_attention_mask") if batch.get(k) is not None]

        def encode(*tensors, tower=tower, head=head, keys=keys, m=m):
            t = dict(zip(keys, tensors))
            mask = t.get(f"{m}_attention_mask")
            if f"{m}_input_ids" in t:
                return head(tower(t[f"{m}_input_ids"], t.get(f"{m}_values"), attention_mask=mask))
            return head(tower(t[f"{m}_values"], attention_mask=mask))

        tensors = [batch[k] for k in keys]
        n, chunk = tensors[0].shape[0], config.chunk_cells
        if chunk is None or chunk >= n or not torch.is_grad_enabled():
            zs.append(encode(*tensors))
        else:  # torch's own activation checkpointing, one call per chunk of cells
            from torch.utils.checkpoint import checkpoint

            zs.append(torch.cat([checkpoint(encode, *(t[s:s + chunk] for t in tensors), use_reentrant=False)
                                 for s in range(0, n, chunk)]))
    return zs[0], zs[1]


class ContrastiveObjective:
    """scmamba: symmetric InfoNCE between the two towers' cell embeddings + cosine regulariser
    (:func:`contrastive_loss`).

    Default encoder: ``model.towers[m]`` (a CellModel per modality m of ``config.modalities``)
    reads ``batch["{m}_values"]`` (patches, (B, n_patches, patch_size)) or
    ``batch["{m}_input_ids"]`` (+ ``"{m}_values"``), with ``batch["{m}_attention_mask"]``, and
    its ``heads[config.head]`` (a ProjectionHead) gives (B, d). Row i of both modalities is one
    cell. Another model layout passes ``encode(model, batch) -> (z_a, z_b)``.
    """

    def __init__(self, config: ContrastiveConfig = ContrastiveConfig(), *, encode: Encoder | None = None):
        self.config = config
        self.encode = encode

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, Metrics]:
        z_a, z_b = (self.encode(model, batch) if self.encode is not None
                    else _tower_embeddings(model, batch, self.config))
        return contrastive_loss(z_a, z_b, temperature=self.config.temperature,
                                cosine_weight=self.config.cosine_weight)


# ---------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------
#: objective name -> (config class, objective class)
OBJECTIVES = {
    "masked_value": (MaskedValueObjectiveConfig, MaskedValueObjective),
    "masked_gene": (MaskedGeneObjectiveConfig, MaskedGeneObjective),
    "next_token": (NextTokenConfig, NextTokenObjective),
    "genemamba": (GeneMambaConfig, GeneMambaObjective),
    "contrastive": (ContrastiveConfig, ContrastiveObjective),
}
#: recipe -> objective name
RECIPE_OBJECTIVES = {"scmamba2": "masked_value", "genemamba": "genemamba", "scmamba": "contrastive"}


def _as_config(cls, config, owner: str):
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise InputError(f"{owner}: unknown objective settings {unknown} (known: {sorted(names)})")
        return cls(**config)
    raise InputError(f"{owner}: config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")


def build_objective(name: str, config: Any = None, *, vocabulary: Vocabulary | None = None,
                    gene_sets: GeneSets | Sequence[str | os.PathLike] | None = None):
    """The objective of a recipe (or an objective by name).

    Parameters
    ----------
    name
        A recipe ("genemamba", "scmamba2", "scmamba") or an objective name of :data:`OBJECTIVES`.
        "transformer" is refused: a Transformer peer trains with the objective of the recipe it
        is compared with, so pass that recipe (genemamba with ``lm: masked_gene``).
    config
        The objective's config dataclass, a dict of its fields (the workflow's params), or None
        for the defaults.
    vocabulary
        Needed to map ``gene_sets`` given as GMT paths.
    gene_sets
        genemamba with ``pathway_weight > 0``: :class:`~cellmamba.train.pathways.GeneSets`, or GMT
        file paths mapped through ``vocabulary`` (sets with < ``min_set_genes`` genes dropped).

    Returns
    -------
    A callable ``objective(model, batch) -> (loss, metrics)``.
    """
    if name == "transformer":
        raise InputError("build_objective: 'transformer' has no objective of its own; pass the recipe it is compared "
                         "with ('genemamba' with lm='masked_gene', 'scmamba2' or 'scmamba')")
    key = RECIPE_OBJECTIVES.get(name, name)
    if key not in OBJECTIVES:
        raise InputError(f"build_objective: unknown recipe or objective {name!r} (recipes: "
                         f"{sorted(RECIPE_OBJECTIVES)}; objectives: {sorted(OBJECTIVES)})")
    cfg_cls, obj_cls = OBJECTIVES[key]
    cfg = _as_config(cfg_cls, config, f"build_objective({name!r})")
    if key != "genemamba":
        if gene_sets is not None:
            raise InputError(f"build_objective: gene_sets are only used by 'genemamba', not {name!r}")
        return obj_cls(cfg)
    if cfg.pathway_weight > 0 and gene_sets is not None and not isinstance(gene_sets, GeneSets):
        if vocabulary is None:
            raise InputError("build_objective('genemamba'): gene_sets given as GMT paths need vocabulary= to map "
                             "symbols to token ids")
        gene_sets = load_gene_sets(gene_sets, vocabulary, min_genes=cfg.min_set_genes)
    return obj_cls(cfg, gene_sets if cfg.pathway_weight > 0 else None)

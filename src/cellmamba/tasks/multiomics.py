"""Multi-omics alignment, the ``scmamba`` recipe (scMamba, arXiv 2506.20697; issue 6).

Two towers, one per modality of a paired multi-omics dataset (RNA + ADT for the BMMC CITE-seq
file, RNA + ATAC for the multiome file), each a :class:`~cellmamba.models.CellModel` that reads
patches of features in genomic order: linear projection of each patch + a learned position,
a backbone, and a "projection" head. They are trained from scratch on the paired cells with the
symmetric InfoNCE between the two modalities' projections plus a cosine-similarity
regulariser (:class:`~cellmamba.train.objectives.ContrastiveObjective`, unchanged), through the
shared training loop (checkpoints, resume, metrics.csv, bf16 on CUDA).

Backbones (one table row each): ``mamba2`` (unidirectional Mamba2 with last-token pooling, as
published), ``bimamba_mamba2`` (our BiMamba variant, mean pooling) and ``transformer`` (the
same-size peer of the ``mamba2`` tower: :func:`~cellmamba.models.backbone.same_size_transformer`,
mean pooling).

Features and values, per modality (var ``modality`` of :func:`cellmamba.datasets.read_bmmc`):

- ``rna``: genes in genomic order (:func:`~cellmamba.tokenize.patch.genomic_order` on var
  ``gene_id``, or on Ensembl var names when that column is absent); genes without a position
  are dropped (default, as the patch tokenizer) or appended in file order (``unplaced``), and
  counted. Values: log1p(counts / cell total x 1e4).
- ``atac``: peaks parsed from their names (``chr1-9776-10668`` or ``chr1:9776-10668``), sorted
  by chromosome (1..22, X, Y, MT: the patch tokenizer's order; other contigs such as
  ``GL000194.1`` after them, by name) then start, end. Values: log1p(counts / total x 1e4).
- ``protein``: no genomic position; kept in file order. Values: CLR per cell,
  ``log1p(x / exp(mean_j log1p(x_j)))`` (muon's formula, applied over each cell's proteins).

Each cell of a modality becomes a dense ``(n_patches, patch_size)`` array (the last patch
zero-padded), the same ``n_patches`` for every cell; batches are cut from the sparse
normalised matrix on the fly.

The towers and their directory format are :mod:`cellmamba.models.two_tower`; this module
prepares the features, builds the towers for them, trains and embeds.

Departures from the paper (for docs/fidelity.md):

- scMamba's training code is not public; sizes (d_model, depth, d_state, patch size), the
  temperature, the cosine weight and the schedule are ours (see :class:`MultiomicsConfig`).
- Training is self-supervised on ALL cells of the dataset (no held-out split, as scMamba
  aligns the whole dataset); the embeddings returned are those of every cell.
- The embedding of a cell is the L2-normalised output of the projection head (the space the
  contrastive loss compares), not the pooled backbone state.
- ATAC values are log-normalised counts (not TF-IDF / binarised peaks); protein values are a
  per-cell CLR. ``max_features`` (off by default) keeps the most variable features of a modality
  (variance of the normalised values), still in genomic order: a demo-size shortcut, not in the
  paper.
- BiMamba towers and the Transformer towers are our comparison rows, not the paper's model.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..datasets import VAR_GENE_ID, VAR_MODALITY
from .._util import seed_all
from ..errors import InputError
from ..keys import LAYER_COUNTS
from ..models.backbone import BackboneConfig, count_parameters, same_size_transformer
from ..models.embeddings import EmbeddingConfig
from ..models.heads import HeadConfig
from ..models.model import CellModelConfig
from ..models.two_tower import HEAD, TwoTowerConfig, TwoTowerModel
from ..normalisation import clr_per_cell, log_normalise
from ..tokenize.patch import genomic_order, parse_peaks, peak_order, read_positions
from ..train import train
from ..train.config import OptimConfig
from ..train.objectives import ContrastiveConfig, ContrastiveObjective
from .finetune import pick_device

# TwoTowerConfig, TwoTowerModel (cellmamba.models.two_tower) and parse_peaks, peak_order
# (cellmamba.tokenize.patch) live elsewhere; their names here keep the old import path working
__all__ = ["ARCHS", "MODALITIES", "MultiomicsConfig", "ModalityData", "MultiomicsResult", "TwoTowerConfig",
           "TwoTowerModel", "parse_peaks", "peak_order", "prepare_modalities", "build_two_tower",
           "embed_modalities", "run_multiomics"]

log = logging.getLogger(__name__)

#: the accepted values of ``MultiomicsConfig.arch``
ARCHS = ("mamba2", "bimamba_mamba2", "transformer")
#: modalities of var ``modality`` this task reads (cellmamba.datasets.FEATURE_MODALITY's values)
MODALITIES = ("rna", "protein", "atac")


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultiomicsConfig(OptimConfig):
    """Settings of one two-tower run (JSON round trip via ``dataclasses.asdict`` / :meth:`from_dict`):
    the optimisation block (:class:`~cellmamba.train.config.OptimConfig`; each epoch drops its
    incomplete last batch, and ``micro_batch_size`` cells are a recomputed tower pass, the InfoNCE
    still over ``batch_size``) and the towers' own."""

    # "mamba2" (published, unidirectional) | "bimamba_mamba2" (our variant) | "transformer" (same-size peer of mamba2)
    arch: str = "mamba2"
    d_model: int = 128              # width of each tower
    n_layers: int = 4               # depth of each tower
    d_state: int = 16               # Mamba2 state size (small: the towers are trained from scratch on one dataset)
    headdim: int = 0                # Mamba2 head width; 0 = min(64, 2 * d_model)
    merge: str = "sum"              # bimamba_mamba2 towers: how the two directions merge ("mean" | "sum" | "gate")
    merge_every: str = "layer"      # bimamba_mamba2 towers: in every layer, as SC-MAMBA2 ("layer" | "stack")
    patch_size: int = 64            # features per patch
    pooling: str = "auto"           # cell vector: "auto" (mamba2: last, as published; others: mean) | "last" | "mean"
    d_out: int = 64                 # projection width (the embedding returned)
    temperature: float = 0.1        # InfoNCE temperature on cosine similarities
    cosine_weight: float = 0.1      # weight of mean(1 - cos) between a cell's two projections
    epochs: int = 20                # passes over all cells (each epoch drops its incomplete last batch)
    lr: float = 1e-3                # peak learning rate (AdamW, linear warm-up, cosine decay)
    batch_size: int = 64            # cells per step = InfoNCE negatives + 1 (capped at the number of cells)
    weight_decay: float = 0.01      # AdamW decoupled weight decay
    seed: int = 0                   # model initialisation and data order
    max_features: int | None = None  # per modality: keep the most variable features (None = all; demo shortcut)
    unplaced: str = "drop"          # rna genes without a position: "drop" | "append" (after the placed); counted
    embed_batch_size: int = 256     # cells per forward pass when embedding

    drop_last: ClassVar[bool] = True    # InfoNCE wants equal-sized batches >= 2 (_PairedLoader)
    accumulate: ClassVar[bool] = False  # micro-batches are the objective's recomputed chunks (chunk_cells)

    def __post_init__(self):
        super().__post_init__()

        def need(ok, what):
            if not ok:
                raise InputError(f"MultiomicsConfig: {what}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        need(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("d_model", "n_layers", "d_state", "patch_size", "d_out", "embed_batch_size"):
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        need(is_int(self.headdim) and self.headdim >= 0, f"headdim must be an integer >= 0, got {self.headdim!r}")
        need(self.pooling in ("auto", "last", "mean"), f"pooling must be auto, last or mean, got {self.pooling!r}")
        need(isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
             and math.isfinite(self.temperature) and self.temperature > 0,
             f"temperature must be a finite number > 0, got {self.temperature!r}")
        need(isinstance(self.cosine_weight, (int, float)) and not isinstance(self.cosine_weight, bool)
             and math.isfinite(self.cosine_weight) and self.cosine_weight >= 0,
             f"cosine_weight must be a finite number >= 0, got {self.cosine_weight!r}")
        need(self.max_features is None or (is_int(self.max_features) and self.max_features >= 1),
             f"max_features must be None or an integer >= 1, got {self.max_features!r}")
        need(self.unplaced in ("drop", "append"), f"unplaced must be drop or append, got {self.unplaced!r}")

    @property
    def resolved_pooling(self) -> str:
        """The pooling used: "auto" is "last" for the unidirectional mamba2 tower, "mean" otherwise."""
        if self.pooling != "auto":
            return self.pooling
        return "last" if self.arch == "mamba2" else "mean"

    def mamba2_backbone(self) -> BackboneConfig:
        """The unidirectional Mamba2 tower's backbone (the Transformer peer is sized against it)."""
        headdim = self.headdim or min(64, 2 * self.d_model)
        return BackboneConfig(arch="mamba2", d_model=self.d_model, n_layers=self.n_layers, d_state=self.d_state,
                              headdim=headdim, backend=self.backend, n_heads=_n_heads(self.d_model))

    def backbone(self) -> BackboneConfig:
        """The backbone of ``arch``."""
        base = self.mamba2_backbone()
        if self.arch == "transformer":
            return same_size_transformer(base)
        if self.arch.startswith("bimamba"):
            return dataclasses.replace(base, arch=self.arch, merge=self.merge, merge_every=self.merge_every)
        return dataclasses.replace(base, arch=self.arch)


def _n_heads(d_model: int) -> int:
    # attention heads of the Transformer peer: 8 where d_model allows, else the largest divisor <= 8
    return next(h for h in (8, 4, 2, 1) if d_model % h == 0)


# ---------------------------------------------------------------------------------------------
# features: order and values
# ---------------------------------------------------------------------------------------------
@dataclass
class ModalityData:
    """One modality's cells as normalised values in feature order, cut into patches on demand.

    Attributes
    ----------
    name : str
        "rna", "protein" or "atac".
    features : list of str
        (n_features,) var names in the order the tower reads them.
    matrix : scipy.sparse.csr_matrix
        float32 (n_cells, n_features), normalised values, columns in ``features`` order.
    patch_size : int
    n_unplaced : int
        rna: genes without a genomic position (dropped or appended); 0 otherwise.
    """

    name: str
    features: list[str]
    matrix: sp.csr_matrix
    patch_size: int
    n_unplaced: int = 0

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_patches(self) -> int:
        return -(-self.n_features // self.patch_size)

    def patches(self, rows) -> np.ndarray:
        """Dense patches of the cells at ``rows``: float32 (len(rows), n_patches, patch_size);
        feature f lies at ``[f // patch_size, f % patch_size]``, zeros after the last feature."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((rows.shape[0], self.n_patches * self.patch_size), dtype=np.float32)
        out[:, :self.n_features] = self.matrix[rows].toarray()
        return out.reshape(rows.shape[0], self.n_patches, self.patch_size)


def _counts(adata) -> sp.csr_matrix:
    if LAYER_COUNTS not in adata.layers:
        raise InputError(f"multiomics: layer {LAYER_COUNTS!r} (raw counts) is required; found layers "
                         f"{list(adata.layers)}")
    X = adata.layers[LAYER_COUNTS]
    X = sp.csr_matrix(X, dtype=np.float32) if not sp.issparse(X) or X.format != "csr" else X
    data = X.data
    if data.size and (not np.all(np.isfinite(data)) or data.min() < 0):
        raise InputError(f"multiomics: layer {LAYER_COUNTS!r} holds negative or non-finite values; raw counts "
                         "are expected")
    return X


def _modalities(adata) -> tuple[str, str]:
    if VAR_MODALITY not in adata.var:
        raise InputError(f"multiomics: var column {VAR_MODALITY!r} (rna / protein / atac) is required; var has "
                         f"{list(adata.var.columns)}")
    found = pd.unique(adata.var[VAR_MODALITY].astype(str))
    unknown = sorted(set(found) - set(MODALITIES))
    if unknown:
        raise InputError(f"multiomics: var[{VAR_MODALITY!r}] has values {unknown}; expected {list(MODALITIES)}")
    if len(found) != 2:
        raise InputError(f"multiomics: exactly two modalities are needed for the two towers; var[{VAR_MODALITY!r}] "
                         f"holds {sorted(found)}")
    return tuple(sorted(found, key=lambda m: (m != "rna", m)))


def _gene_ids(var: pd.DataFrame) -> np.ndarray:
    if VAR_GENE_ID in var:
        return var[VAR_GENE_ID].astype(str).to_numpy()
    names = var.index.astype(str)
    if len(names) and all(n.startswith("ENS") for n in names):
        return names.to_numpy()
    raise InputError(f"multiomics: rna features need Ensembl ids in var[{VAR_GENE_ID!r}] (or as var names) to be "
                     f"put in genomic order; var has {list(var.columns)}, names e.g. {list(names[:3])}")


def _feature_order(name: str, var: pd.DataFrame, positions, unplaced: str) -> tuple[np.ndarray, int]:
    """Column positions (within the modality) in reading order, and the count of unplaced genes."""
    if name == "rna":
        if positions is None:
            raise InputError("multiomics: rna features need a gene position table (positions=...)")
        order = genomic_order(_gene_ids(var), positions, unplaced=unplaced)
        if order.n_unplaced:
            log.info("rna: %d of %d genes have no genomic position (%s)", order.n_unplaced, len(var),
                     "dropped" if unplaced == "drop" else "appended")
        return order.genes, order.n_unplaced
    if name == "atac":
        return peak_order(var.index), 0
    return np.arange(len(var), dtype=np.int64), 0  # protein: no genomic position, file order


def _top_variance(X: sp.csr_matrix, k: int) -> np.ndarray:
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    sq = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
    var = sq - mean ** 2
    return np.sort(np.argsort(-var, kind="stable")[:k])


def prepare_modalities(adata, positions=None, *, config: MultiomicsConfig,
                       features: Mapping[str, list[str]] | None = None) -> dict[str, ModalityData]:
    """Both modalities of a paired dataset as normalised matrices in reading order.

    Parameters
    ----------
    adata
        AnnData with var ``modality`` (exactly two of rna / protein / atac), ``layers["counts"]``,
        var ``gene_id`` (Ensembl ids) for rna, peak var names for atac.
    positions
        Gene position table (:func:`~cellmamba.tokenize.patch.read_positions` output or its path);
        needed when rna is a modality.
    config
        Uses ``patch_size``, ``max_features``, ``unplaced``.
    features
        Saved feature order (``TwoTowerModel.features``): when given, each modality reads exactly
        these var names in this order (a missing one is an InputError) instead of computing it.

    Returns
    -------
    dict modality -> :class:`ModalityData`, rna first (else alphabetical); insertion order is
    the tower order.
    """
    modalities = _modalities(adata)
    counts = _counts(adata)
    if isinstance(positions, (str, os.PathLike)):
        positions = read_positions(positions)
    mod_col = adata.var[VAR_MODALITY].astype(str).to_numpy()
    out = {}
    for m in modalities:
        cols = np.flatnonzero(mod_col == m)
        var = adata.var.iloc[cols]
        n_unplaced = 0
        if features is not None:
            if m not in features:
                raise InputError(f"multiomics: the saved feature order has no modality {m!r} (has {sorted(features)})")
            idx = pd.Index(var.index.astype(str)).get_indexer(list(features[m]))
            if (idx < 0).any():
                missing = [f for f, i in zip(features[m], idx) if i < 0]
                raise InputError(f"multiomics: {len(missing)} {m} features of the saved model are not in the data "
                                 f"(e.g. {missing[0]!r})")
            order = idx
        else:
            order, n_unplaced = _feature_order(m, var, positions, config.unplaced)
        X = counts[:, cols]
        # the baseline's definitions (cellmamba.normalisation): log1p(normalize_total 1e4) / per-cell CLR
        X = log_normalise(X) if m in ("rna", "atac") else sp.csr_matrix(clr_per_cell(X))
        X = X[:, order]
        names = var.index.astype(str).to_numpy()[order]
        if features is None and config.max_features is not None and X.shape[1] > config.max_features:
            keep = _top_variance(X, config.max_features)
            X, names = X[:, keep], names[keep]
        X = sp.csr_matrix(X)
        X.sort_indices()
        out[m] = ModalityData(m, [str(n) for n in names], X, config.patch_size, n_unplaced)
        log.info("%s: %d features -> %d patches of %d", m, out[m].n_features, out[m].n_patches, config.patch_size)
    return out


# ---------------------------------------------------------------------------------------------
# the model (cellmamba.models.two_tower) built for the data
# ---------------------------------------------------------------------------------------------
def _fit_chunk(backbone: BackboneConfig, n_patches: int) -> BackboneConfig:
    # the SSD reference pads the sequence to a whole chunk: a chunk much longer than the patch
    # sequence (e.g. 256 for 16 patches) multiplies its cost; the result does not depend on it
    if backbone.arch == "transformer":
        return backbone
    chunk = min(backbone.chunk_size, max(16, 1 << max(int(n_patches) - 1, 0).bit_length()))
    return dataclasses.replace(backbone, chunk_size=chunk)


def build_two_tower(data: Mapping[str, ModalityData], config: MultiomicsConfig, *,
                    fit_chunk: bool = True) -> TwoTowerModel:
    """Fresh towers for ``data`` (from :func:`prepare_modalities`), initialised from ``config.seed``:
    patch embedding with ``max_patches`` = the modality's n_patches, ``config.backbone()``, and a
    "projection" head (width ``d_out``, pooling ``config.resolved_pooling``).

    ``fit_chunk``: shrink the Mamba towers' SSD chunk to the patch sequence (next power of two,
    >= 16): same results, far less padding in the pure-PyTorch reference; run_multiomics turns
    it off on CUDA, where the kernels keep their default chunk."""
    backbone = config.backbone()
    head = HeadConfig(kind="projection", n_out=config.d_out, pooling=config.resolved_pooling)
    mods = tuple(data)
    towers = {m: CellModelConfig(embedding=EmbeddingConfig(kind="patch", patch_size=config.patch_size,
                                                           max_patches=data[m].n_patches),
                                 backbone=_fit_chunk(backbone, data[m].n_patches) if fit_chunk else backbone,
                                 heads={HEAD: head}) for m in mods}
    seed_all(config.seed)
    return TwoTowerModel(TwoTowerConfig(mods, towers), features={m: d.features for m, d in data.items()})


# ---------------------------------------------------------------------------------------------
# data loading and embedding
# ---------------------------------------------------------------------------------------------
def _batch(data: Mapping[str, ModalityData], rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The batch ContrastiveObjective reads: ``{m}_values`` float32 (B, n_patches_m, patch_size),
    ``{m}_attention_mask`` bool (B, n_patches_m) (all True: every cell has every patch),
    ``cell_index`` int64 (B,), and ``attention_mask`` (B, n_patches of both towers), read only by
    the training loop to count tokens."""
    batch = {}
    for m, d in data.items():
        batch[f"{m}_values"] = torch.from_numpy(d.patches(rows))
        batch[f"{m}_attention_mask"] = torch.ones((len(rows), d.n_patches), dtype=torch.bool)
    batch["attention_mask"] = torch.cat([batch[f"{m}_attention_mask"] for m in data], dim=1)
    batch["cell_index"] = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    return batch


class _EpochSampler:
    """Seeded permutation per epoch (``set_epoch`` is the loop's resume hook)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)


class _PairedLoader:
    """Full batches of shuffled cells, both modalities' patches built per batch from the sparse
    matrices; the incomplete last batch is dropped (InfoNCE wants equal-sized batches >= 2)."""

    def __init__(self, data: Mapping[str, ModalityData], *, batch_size: int, seed: int):
        self.data = data
        self.batch_size = batch_size
        self.n = next(iter(data.values())).matrix.shape[0]
        self.sampler = _EpochSampler(self.n, seed)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = self.sampler.order()
        for i in range(len(self)):
            yield _batch(self.data, order[i * self.batch_size:(i + 1) * self.batch_size])


@torch.no_grad()
def embed_modalities(model: TwoTowerModel, data: Mapping[str, ModalityData], *, batch_size: int = 256,
                     device=None, precision: str = "auto", progress: bool = True) -> dict[str, np.ndarray]:
    """Projections of every cell by each tower, L2-normalised.

    Returns
    -------
    dict modality -> float32 (n_cells, d_out), rows in the data's cell order, unit norm.
    """
    from ..runlog import progress as _bar

    from ..train.precision import autocast, resolve_precision

    device = pick_device(device)
    model = model.to(device).eval()
    precision = resolve_precision(precision, device)
    n = next(iter(data.values())).matrix.shape[0]
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    for start in _bar(range(0, n, batch_size), desc="embed", disable=not progress, dynamic_ncols=True):
        rows = np.arange(start, min(start + batch_size, n))
        batch = {k: v.to(device) for k, v in _batch(data, rows).items()}
        with autocast(device, precision):
            z = model(batch)
        for m in model.modalities:
            parts[m].append(F.normalize(z[m].float(), dim=-1).cpu())
    return {m: torch.cat(p).numpy().astype(np.float32) if p else np.zeros((0, 0), np.float32)
            for m, p in parts.items()}


# ---------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------
@dataclass
class MultiomicsResult:
    """What :func:`run_multiomics` returns.

    Attributes
    ----------
    embeddings : dict modality -> float32 (n_cells, d_out)
        L2-normalised projections of every cell, in ``adata`` order.
    modalities : (str, str)
        Tower order, rna first.
    n_features, n_patches, n_params : dict modality -> int
        Features read, patches per cell, parameters of the tower (embedding + backbone + head).
    n_unplaced : dict modality -> int
        rna genes without a genomic position (dropped or appended); 0 for the others.
    train_metrics : dict
        The last logged training row (loss, infonce, cosine_reg, retrieval_acc, lr, ...).
    arch, pooling : str
        The backbone and the pooling used.
    """

    embeddings: dict[str, np.ndarray]
    modalities: tuple[str, str]
    n_features: dict[str, int]
    n_patches: dict[str, int]
    n_params: dict[str, int]
    n_unplaced: dict[str, int]
    train_metrics: dict[str, float]
    arch: str
    pooling: str


def _last_logged(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for k, v in (rows[-1] if rows else {}).items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def run_multiomics(adata, *, config: MultiomicsConfig, out_dir: str | os.PathLike, positions=None,
                   device=None) -> MultiomicsResult:
    """Train the two towers on every cell of a paired dataset and embed every cell.

    Parameters
    ----------
    adata
        Paired multi-omics AnnData (:func:`cellmamba.datasets.read_bmmc` layout): var
        ``modality`` with exactly two of rna / protein / atac, ``layers["counts"]``.
    config
        :class:`MultiomicsConfig`.
    out_dir
        Training outputs (:func:`cellmamba.train.train`: checkpoints, metrics.csv, ...);
        ``out_dir/model/`` is finally replaced by the two towers (:meth:`TwoTowerModel.save_pretrained`).
    positions
        Gene position table (DataFrame of :func:`~cellmamba.tokenize.patch.read_positions`, or
        its path), needed for rna.
    device
        Default CUDA when available, else CPU.

    Returns
    -------
    MultiomicsResult
    """
    seed_all(config.seed)
    if adata.n_obs < 2:
        raise InputError(f"multiomics: contrastive training needs at least 2 cells, got {adata.n_obs}")
    data = prepare_modalities(adata, positions, config=config)
    modalities = tuple(data)
    device = pick_device(device)
    model = build_two_tower(data, config, fit_chunk=device.type != "cuda")
    n_params = {m: count_parameters(model.towers[m]) for m in modalities}
    tcfg = config.to_train_config(adata.n_obs)
    objective = ContrastiveObjective(ContrastiveConfig(temperature=config.temperature,
                                                       cosine_weight=config.cosine_weight,
                                                       modalities=modalities, head=HEAD,
                                                       chunk_cells=config.micro_batch_size))
    loader = _PairedLoader(data, batch_size=tcfg.batch_size, seed=config.seed)
    log.info("multiomics (%s, pooling %s): %d cells, %s, %s parameters per tower, %d steps of %d cells",
             config.arch, config.resolved_pooling, adata.n_obs,
             ", ".join(f"{m} {d.n_features} features / {d.n_patches} patches" for m, d in data.items()),
             n_params, tcfg.max_steps, tcfg.batch_size)
    out_dir = Path(out_dir)
    state = train(model, objective, loader, tcfg, out_dir=out_dir, device=device)
    metrics = dict(state.last_metrics) or _last_logged(out_dir / "metrics.csv")  # a finished run resumed: no new row
    model.save_pretrained(out_dir / "model")  # replaces the loop's single state-dict export
    emb = embed_modalities(model, data, batch_size=config.embed_batch_size, device=device,
                           precision=config.precision)
    return MultiomicsResult(embeddings=emb, modalities=modalities,
                            n_features={m: d.n_features for m, d in data.items()},
                            n_patches={m: d.n_patches for m, d in data.items()}, n_params=n_params,
                            n_unplaced={m: d.n_unplaced for m, d in data.items()},
                            train_metrics=metrics, arch=config.arch,
                            pooling=config.resolved_pooling)

"""The perturbation model (scGPT's perturbation setting, on any pretrained rank or binned model):
a control cell's values and the perturbed genes' flags in, the perturbed cell's values out.

:class:`ContinuousValueEncoder` reads each token's value; :class:`PerturbationModel` adds it to
the pretrained gene embedding and a flag embedding, runs the pretrained backbone and a new
per-token regression head. The fine-tuning and prediction (pairs of cells, the objective,
the control pools) are :mod:`cellmamba.tasks.perturb`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import InputError
from ..vocab import PAD_ID
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict, read_weights
from .heads import ValueRegressionHead
from .model import CellModel, CellModelConfig, check_init

__all__ = ["ContinuousValueEncoder", "PerturbationModelConfig", "PerturbationModel"]

log = logging.getLogger(__name__)


class ContinuousValueEncoder(nn.Module):
    """A number per token -> a vector: Linear(1, d) -> ReLU -> Linear(d, d) -> LayerNorm
    (scGPT's ``ContinuousValueEncoder``, values clamped at ``max_value`` as there).

    values (batch, seq_len) -> (batch, seq_len, d_model)."""

    def __init__(self, d_model: int, *, max_value: float = 512.0):
        super().__init__()
        self.max_value = float(max_value)
        self.mlp = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = values.float().clamp(max=self.max_value).unsqueeze(-1)
        return self.norm(self.mlp(x))


@dataclass(frozen=True)
class PerturbationModelConfig:
    """What a :class:`PerturbationModel` is built from (stored in its checkpoints' config.json)."""

    pretrained: dict                  # the pretrained CellModelConfig.to_dict() (heads dropped)
    kind: str = "perturbation"        # model kind tag

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PerturbationModel(nn.Module):
    """Control cell in, perturbed cell out: per-token regression of each gene's log1p value.

    Embedding of token i = gene-id embedding (pretrained ``embed.gene``) + continuous value
    encoding of the control value (new, :class:`ContinuousValueEncoder`) + perturbation-flag
    embedding (new; 0 = not perturbed, 1 = perturbed). Padding positions get a zero embedding.
    The sum goes through the pretrained backbone; a new :class:`ValueRegressionHead` reads
    each token's final state. Every model, whatever its pretraining tokenizer (rank or binned),
    reads values through the continuous encoder: scGPT's perturbation setting is ``n_bins=0``
    (log values fed directly), so a binned model's categorical value embedding is not used.
    Patch (scMamba) models have no gene tokens and are refused.

    State dict: ``gene.weight``, ``backbone.*`` (the pretrained model's keys under ``embed.gene``
    / ``backbone``), ``value_encoder.*``, ``flag.weight``, ``head.*``.
    """

    def __init__(self, pretrained: CellModel, *, seed: int = 0, source: str = "pretrained model"):
        super().__init__()
        kind = pretrained.config.embedding.kind
        if kind not in ("rank", "binned"):
            raise InputError(f"{source}: perturbation fine-tuning needs gene tokens (a rank or binned model); "
                             f"this model reads {kind!r} inputs")
        d = pretrained.config.backbone.d_model
        self.config = PerturbationModelConfig(pretrained=dataclasses.replace(pretrained.config, heads={}).to_dict())
        self.vocab_size = pretrained.config.embedding.vocab_size
        self.gene = pretrained.embed.gene
        self.backbone = pretrained.backbone
        # new modules from their own seed, leaving the global RNG streams as they were
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.value_encoder = ContinuousValueEncoder(d)
            self.flag = nn.Embedding(2, d)  # N(0, 1) init, as scGPT's pert_encoder (nn.Embedding's default)
            self.head = ValueRegressionHead(d)

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, *, backend: str = "auto", seed: int = 0,
                        init: str = "pretrained") -> "PerturbationModel":
        """The gene embedding and backbone of ``model_dir`` (loaded strictly) with new modules.

        ``init="scratch"``: the same architecture with a randomly initialised gene embedding and
        backbone (from ``seed``; the weights file is not read), the no-pretraining control; the
        new modules are the same as with ``init="pretrained"``."""
        check_init(init, where="PerturbationModel.from_pretrained")
        if init == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pretrained = CellModel.scratch_like(model_dir, backend=backend)
        else:
            pretrained = CellModel.from_pretrained(model_dir, backend=backend)
        model = cls(pretrained, seed=seed, source=str(model_dir))
        log.info("perturbation model from %s%s (%s backbone, %s tokens), %d parameters", model_dir,
                 f" (its architecture, random init from seed {seed})" if init == "scratch" else "",
                 pretrained.config.backbone.arch, pretrained.config.embedding.kind,
                 sum(p.numel() for p in model.parameters()))
        return model

    @classmethod
    def load(cls, directory: str | os.PathLike, *, backend: str = "auto") -> "PerturbationModel":
        """A fine-tuned model written by the training loop (``<out_dir>/model``: config.json with
        this class's config, model.safetensors), weights loaded strictly."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        try:
            meta = json.loads(cfg_path.read_text())
            pretrained = meta["config"]["pretrained"]
            if meta["config"].get("kind") != "perturbation":
                raise KeyError("kind")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{cfg_path}: not a fine-tuned perturbation model's config ({exc!r})") from exc
        config = CellModelConfig.from_dict(pretrained, source=str(cfg_path))
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, backend=backend))
        model = cls(CellModel(config), source=str(directory))
        load_state_dict_strict(model, read_weights(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return model

    def forward(self, gene_ids: torch.Tensor, values: torch.Tensor, flags: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the perturbed cell.

        Parameters
        ----------
        gene_ids : (batch, seq_len) int64 token ids (vocabulary row + N_SPECIAL)
        values : (batch, seq_len) float, the control cell's log1p values
        flags : (batch, seq_len) int64, 1 at the perturbed genes, 0 elsewhere (padding: anything)
        attention_mask : (batch, seq_len) bool, True at real tokens, right-padded; default
            ``gene_ids != PAD_ID``

        Returns
        -------
        (batch, seq_len) float: predicted log1p values; 0 at padding.
        """
        if gene_ids.dim() != 2 or gene_ids.is_floating_point():
            raise InputError(f"gene_ids must be (batch, seq_len) integer token ids, got {gene_ids.dtype} "
                             f"{tuple(gene_ids.shape)}")
        if values.shape != gene_ids.shape or flags.shape != gene_ids.shape:
            raise InputError(f"values and flags must have gene_ids' shape {tuple(gene_ids.shape)}, got "
                             f"{tuple(values.shape)} and {tuple(flags.shape)}")
        mask = (gene_ids != PAD_ID) if attention_mask is None else attention_mask.bool()
        ids = gene_ids.masked_fill(~mask, PAD_ID)
        flags = flags.long().masked_fill(~mask, 0)
        if not gene_ids.is_cuda and ids.numel():  # a CUDA index error would be an opaque device assert
            if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
                raise InputError(f"token ids must be in [0, {self.vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
            if int(flags.min()) < 0 or int(flags.max()) > 1:
                raise InputError(f"flags must be 0 or 1 at real tokens, got [{int(flags.min())}, {int(flags.max())}]")
        h = self.gene(ids) + self.value_encoder(values.masked_fill(~mask, 0)) + self.flag(flags)
        h = h * mask.unsqueeze(-1).to(h.dtype)
        out = self.backbone(h, mask)
        return self.head(out).masked_fill(~mask, 0.0)

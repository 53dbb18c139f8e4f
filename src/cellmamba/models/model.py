"""The whole model: input embedding -> backbone -> named heads, saved as a self-describing directory.

A model directory holds ``config.json`` (format tag, version, the :class:`CellModelConfig`) and
``model.safetensors`` (the state dict). Loading rebuilds the model from the config and loads the
weights strictly; nothing is unpickled. Training state (step, optimizer) is the training code's
business: it can write a model directory inside its own checkpoint with :meth:`CellModel.write_pretrained`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from .._util import dataclass_from_dict
from ..errors import InputError
from ..io import atomic_path, read_json_object
from ..vocab import PAD_ID
from ._backend import BackendUnavailableError
from .backbone import Backbone, BackboneConfig, BackboneOutput
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_strict, read_weights, write_weights
from .embeddings import EmbeddingConfig, InputEmbedding
from .heads import HeadConfig, build_head
from .packing import Packing

__all__ = ["FORMAT", "FORMAT_VERSION", "CellModelConfig", "CellModel", "read_model_config"]

FORMAT = "cellmamba.CellModel"
FORMAT_VERSION = 1


def _from_dict(cls, data, where: str):
    return dataclass_from_dict(cls, data, where=where)


@dataclass(frozen=True)
class CellModelConfig:
    """Everything needed to rebuild a :class:`CellModel` (JSON round trip via to_dict / from_dict)."""

    embedding: EmbeddingConfig  # the tokenization read (rank | binned | patch)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # the sequence model; its d_model is the model's
    heads: dict[str, HeadConfig] = field(default_factory=dict)  # named heads, e.g. {"value": HeadConfig("value_regression")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "CellModelConfig":
        """Inverse of :meth:`to_dict`; unknown or invalid keys raise InputError naming ``source``."""
        if not isinstance(data, dict) or "embedding" not in data:
            raise InputError(f"{source}: expected an object with 'embedding', 'backbone' and 'heads'")
        unknown = sorted(set(data) - {"embedding", "backbone", "heads"})
        if unknown:
            raise InputError(f"{source}: unknown keys {unknown}")
        heads = data.get("heads", {})
        if not isinstance(heads, dict):
            raise InputError(f"{source}: 'heads' must be an object of named heads")
        return cls(
            embedding=_from_dict(EmbeddingConfig, data["embedding"], f"{source}: embedding"),
            backbone=_from_dict(BackboneConfig, data.get("backbone", {}), f"{source}: backbone"),
            heads={name: _from_dict(HeadConfig, h, f"{source}: heads.{name}") for name, h in heads.items()},
        )


#: where a fine-tuned model's embedding and backbone start: the pretrained weights, or the same
#: architecture randomly initialised (the ``<model>_scratch`` control of every task table)
INITS = ("pretrained", "scratch")


def check_init(init, *, where: str) -> None:
    """An InputError naming ``where`` unless ``init`` is one of :data:`INITS`."""
    if init not in INITS:
        raise InputError(f"{where}: init must be one of {INITS}, got {init!r}")


def read_model_config(directory: str | os.PathLike) -> CellModelConfig:
    """The :class:`CellModelConfig` of a saved model directory (its config.json), without
    building or loading the model."""
    cfg_path = Path(directory) / CONFIG_NAME
    meta = read_json_object(cfg_path, what=f"the {CONFIG_NAME} of a cellmamba model directory")
    if meta.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: not a {FORMAT} config (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{cfg_path}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this cellmamba reads {FORMAT_VERSION})")
    return CellModelConfig.from_dict(meta.get("config"), source=str(cfg_path))


class CellModel(nn.Module):
    """Embedding, backbone and heads. ``model(inputs, values)`` returns the :class:`BackboneOutput`;
    heads are applied by the caller: ``model.heads["value"](out)``.

    State dict: ``embed.*``, ``backbone.*``, ``heads.<name>.*``.
    """

    def __init__(self, config: CellModelConfig):
        super().__init__()
        self.config = config
        d_model = config.backbone.d_model
        self.embed = InputEmbedding(config.embedding, d_model)
        self.backbone = Backbone(config.backbone)
        self.heads = nn.ModuleDict({name: build_head(h, d_model) for name, h in config.heads.items()})

    def forward(self, inputs: torch.Tensor, values: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None, value_mask: torch.Tensor | None = None,
                packing: Packing | None = None, padded: bool | None = None) -> BackboneOutput:
        """Embed and run the backbone.

        Parameters
        ----------
        inputs : (batch, seq_len) token ids (rank, binned) or (batch, n_patches, patch_size) (patch)
        values : (batch, seq_len), binned only
        attention_mask : (batch, seq_len) bool, optional
            True at real tokens, right-padded. Default: ``inputs != PAD_ID`` for token inputs,
            all True for patches.
        value_mask : (batch, seq_len) bool, optional
            True where values are hidden (binned).
        packing
            The batch's packing plan (the collators' ``batch["packing"]``): the backbone runs on
            packed rows, the outputs are the same (:meth:`Backbone.forward`).
        padded
            Whether any cell is shorter than seq_len, where the caller built the mask (the
            collators' ``batch["padded"]``): the backbone then skips its check of the mask and
            the host waits it costs (:meth:`Backbone.forward`).

        Returns
        -------
        BackboneOutput
        """
        if attention_mask is None:
            if self.config.embedding.kind == "patch":
                attention_mask = torch.ones(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
            else:
                attention_mask = inputs != PAD_ID
        return self.backbone(self.embed(inputs, values, value_mask=value_mask), attention_mask, packing=packing,
                             padded=padded)

    # ---- persistence ----
    def write_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors into an existing ``directory`` (not atomic)."""
        from .._version import __version__

        directory = Path(directory)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "cellmamba_version": __version__,
                "config": self.config.to_dict()}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        write_weights(self, directory / WEIGHTS_NAME)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Save to ``directory`` atomically (written to a temporary sibling, then renamed)."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            self.write_pretrained(tmp)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, backend: str | None = None) -> "CellModel":
        """Rebuild a model saved by :meth:`save_pretrained`, on the CPU, weights loaded strictly.

        Parameters
        ----------
        directory
            The model directory.
        backend
            Override of the saved ``backbone.backend`` (e.g. "torch" to run a GPU-trained model
            on a CPU); weights are the same whatever the backend.
        """
        directory = Path(directory)
        model = cls.scratch_like(directory, backend=backend)
        load_state_dict_strict(model, read_weights(directory / WEIGHTS_NAME), source=str(directory / WEIGHTS_NAME))
        return model

    @classmethod
    def scratch_like(cls, directory: str | os.PathLike, *, backend: str | None = None,
                     heads: Mapping[str, HeadConfig] | None = None) -> "CellModel":
        """The architecture of a model saved by :meth:`save_pretrained`, randomly initialised from
        torch's global generator: the weights file is not read. The no-pretraining control of
        fine-tuning (``<model>_scratch``); ``backend`` as :meth:`from_pretrained`; ``heads``, where
        given, replace the saved config's heads."""
        directory = Path(directory)
        config = read_model_config(directory)
        if backend is not None:
            config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, backend=backend))
        if heads is not None:
            config = dataclasses.replace(config, heads=dict(heads))
        try:
            return cls(config)
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"{directory}: {exc} (or pass backend='torch' to from_pretrained)") from exc

"""Two towers for paired multi-omics data (the ``scmamba`` recipe, scMamba arXiv 2506.20697):
one :class:`~cellmamba.models.CellModel` per modality with a "projection" head, and the
directory format they are saved in.

Directory: ``<modality>/`` per tower (:meth:`CellModel.write_pretrained`) and
``two_tower.json`` (format, tower order, feature order). The training orchestration (features,
batches, the contrastive objective) is :mod:`cellmamba.tasks.multiomics`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import InputError
from ..io import atomic_path, read_json_object
from .model import CellModel, CellModelConfig

__all__ = ["HEAD", "TWO_TOWER_FORMAT", "TWO_TOWER_VERSION", "TWO_TOWER_JSON", "TwoTowerConfig", "TwoTowerModel"]

TWO_TOWER_FORMAT = "cellmamba.TwoTowerModel"
TWO_TOWER_VERSION = 1
TWO_TOWER_JSON = "two_tower.json"
#: the name of each tower's head
HEAD = "projection"


@dataclass(frozen=True)
class TwoTowerConfig:
    """The towers' configs by modality, in tower order (JSON round trip via to_dict / from_dict)."""

    modalities: tuple[str, str]
    towers: dict[str, CellModelConfig] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"modalities": list(self.modalities), "towers": {m: self.towers[m].to_dict() for m in self.modalities}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> "TwoTowerConfig":
        if not isinstance(data, Mapping) or set(data) != {"modalities", "towers"}:
            raise InputError(f"{source}: expected an object with 'modalities' and 'towers'")
        mods = tuple(data["modalities"])
        towers = data["towers"]
        if len(mods) != 2 or not isinstance(towers, Mapping) or set(towers) != set(mods):
            raise InputError(f"{source}: 'towers' must hold one config per modality of {list(mods)}")
        return cls(mods, {m: CellModelConfig.from_dict(towers[m], source=f"{source}: towers.{m}") for m in mods})


class TwoTowerModel(nn.Module):
    """One :class:`~cellmamba.models.CellModel` per modality, ``towers[m]``, each with a
    "projection" head: the layout :class:`~cellmamba.train.objectives.ContrastiveObjective` trains.

    ``features`` (modality -> var names in reading order) travels with the saved model so the
    embeddings can be recomputed; it is not part of the state dict. State dict:
    ``towers.<modality>.{embed,backbone,heads}.*``.
    """

    def __init__(self, config: TwoTowerConfig, *, features: Mapping[str, list[str]] | None = None):
        super().__init__()
        self.config = config
        self.towers = nn.ModuleDict({m: CellModel(config.towers[m]) for m in config.modalities})
        self.features = {m: list(v) for m, v in (features or {}).items()}

    @property
    def modalities(self) -> tuple[str, str]:
        return self.config.modalities

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Projections of a batch: ``batch["{m}_values"]`` (B, n_patches, patch_size) ->
        {m: (B, d_out)} (not normalised)."""
        out = {}
        for m in self.modalities:
            tower = self.towers[m]
            states = tower(batch[f"{m}_values"], attention_mask=batch.get(f"{m}_attention_mask"))
            out[m] = tower.heads[HEAD](states)
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/<modality>/`` (:meth:`CellModel.write_pretrained`) for each tower and
        ``directory/two_tower.json`` (format, tower order, feature order), atomically."""
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            for m in self.modalities:
                (tmp / m).mkdir()
                self.towers[m].write_pretrained(tmp / m)
            meta = {"format": TWO_TOWER_FORMAT, "format_version": TWO_TOWER_VERSION,
                    "modalities": list(self.modalities), "features": {m: self.features.get(m) for m in self.modalities}}
            (tmp / TWO_TOWER_JSON).write_text(json.dumps(meta) + "\n")
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, backend: str | None = None) -> "TwoTowerModel":
        """Inverse of :meth:`save_pretrained` (CPU; weights loaded strictly; ``backend`` as
        :meth:`CellModel.from_pretrained`)."""
        directory = Path(directory)
        path = directory / TWO_TOWER_JSON
        meta = read_json_object(path, what=f"{TWO_TOWER_JSON} of a two-tower model directory")
        if meta.get("format") != TWO_TOWER_FORMAT:
            raise InputError(f"{path}: not a {TWO_TOWER_FORMAT} file")
        if meta.get("format_version") != TWO_TOWER_VERSION:
            raise InputError(f"{path}: format_version {meta.get('format_version')!r} is not supported")
        mods = tuple(meta["modalities"])
        towers = {m: CellModel.from_pretrained(directory / m, backend=backend) for m in mods}
        feats = {m: f for m, f in (meta.get("features") or {}).items() if f is not None}
        model = cls(TwoTowerConfig(mods, {m: t.config for m, t in towers.items()}), features=feats)
        for m in mods:
            model.towers[m].load_state_dict(towers[m].state_dict(), strict=True)
        return model

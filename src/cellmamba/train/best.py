"""``TrainConfig.keep_best``: keeping the weights of the best evaluation across a run and its resumes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch.nn as nn

from ..errors import InputError
from ..io import atomic_path
from ..models.checkpoint import load_state_dict_strict, read_weights, write_weights
from .checkpoint import checkpoint_name
from .distributed import DistEnv

__all__ = ["BestWeights"]


class BestWeights:
    """``TrainConfig.keep_best``: the weights of the evaluation with the lowest loss, as
    ``best/step_XXXXXXXX.safetensors`` in the run directory (written by rank 0, atomically).

    Kept on disk so that a resumed run still has them: the newest checkpoint records the best
    (step, loss) it has seen, and that step's file is kept until a newer checkpoint records
    another. On resume, files of other steps (written after the checkpoint, by steps the resumed
    run repeats) are removed. A NaN loss is never the best."""

    def __init__(self, directory: Path, env: DistEnv, resumed: Mapping[str, Any] | None):
        self.dir, self.env = directory, env
        self.step, self.loss = (int(resumed["step"]), float(resumed["loss"])) if resumed else (None, math.inf)
        self.pinned = self.step  # the step the newest checkpoint refers to
        if env.is_main and directory.is_dir():
            for f in directory.glob("step_*.safetensors"):
                if f.name != self._name(self.step):
                    f.unlink()
        if self.step is not None and not (directory / self._name(self.step)).is_file():
            raise InputError(f"resume: the checkpoint's best evaluation (step {self.step}) has no weights file "
                             f"{directory / self._name(self.step)}")

    @staticmethod
    def _name(step: int | None) -> str:
        return f"{checkpoint_name(step)}.safetensors" if step is not None else ""

    def offer(self, step: int, loss: float, model: nn.Module) -> None:
        """Record ``model``'s weights if ``loss`` is the lowest so far."""
        if not loss < self.loss:
            return
        if self.env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.dir / self._name(step)) as tmp:
                write_weights(model, tmp)
            if self.step is not None and self.step != self.pinned:
                (self.dir / self._name(self.step)).unlink(missing_ok=True)
        self.step, self.loss = step, loss

    def record(self) -> dict | None:
        """The best so far, for a checkpoint's trainer state; from now on its file is the kept one."""
        if self.env.is_main and self.pinned is not None and self.pinned != self.step:
            (self.dir / self._name(self.pinned)).unlink(missing_ok=True)
        self.pinned = self.step
        return None if self.step is None else {"step": self.step, "loss": self.loss}

    def load_into(self, model: nn.Module) -> None:
        path = self.dir / self._name(self.step)
        load_state_dict_strict(model, read_weights(path), source=str(path))

"""Pretraining loss curves: one panel per recipe, the Mamba model and its Transformer peer."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..errors import InputError
from .theme import finish_figure, method_color, method_order, save_figure, style

__all__ = ["loss_curves"]

log = logging.getLogger(__name__)


def loss_curves(metrics_csvs, out: str | os.PathLike) -> pd.DataFrame:
    """Pretraining loss vs optimizer step: one panel per recipe, the Mamba model and its peer.

    Parameters
    ----------
    metrics_csvs
        Mapping model -> ``results/pretrain/<model>/metrics.csv``, or a list of those paths (the
        model is the parent folder's name). Columns ``step`` and ``loss``. A file without rows
        (empty, or a header only: a run that logged nothing) is left out with a warning; a
        missing file, or no file with rows, is an InputError naming the files.
    out
        Figure path; ``.png`` and ``.pdf`` are written.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``recipe``, ``step``, ``loss``.
    """
    if isinstance(metrics_csvs, Mapping):
        files = {str(k): Path(v) for k, v in metrics_csvs.items()}
    else:
        files = {Path(p).parent.name: Path(p) for p in metrics_csvs}
    if not files:
        raise InputError("no pretraining metrics files given")
    frames, empty = [], []
    for model, path in files.items():
        if not path.is_file():
            raise InputError(f"{path}: no such file (expected the pretraining metrics of {model})")
        try:
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            frame = None
        if frame is None or frame.empty:
            log.warning("%s: no training rows (the run logged nothing); %s is left out of the figure", path, model)
            empty.append(str(path))
            continue
        missing = [c for c in ("step", "loss") if c not in frame]
        if missing:
            raise InputError(f"{path}: pretraining metrics lack columns {missing}")
        frames.append(pd.DataFrame({"model": model, "recipe": model.removesuffix("_transformer"),
                                    "step": frame["step"].to_numpy(), "loss": frame["loss"].to_numpy(float)}))
    if not frames:
        raise InputError(f"no pretraining metrics file has training rows: {empty} (failed runs? rerun their "
                         "pretrain jobs)")
    data = pd.concat(frames, ignore_index=True)

    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(data["recipe"]))
    with style():
        fig, axes = plt.subplots(1, len(recipes), squeeze=False, figsize=(4.6 * len(recipes), 4.4))
        for ax, recipe in zip(axes[0], recipes):
            block = data[data["recipe"] == recipe]
            for model in method_order(block["model"]):
                sub = block[block["model"] == model]
                label = "Transformer peer" if model.endswith("_transformer") else "Mamba"
                ax.plot(sub["step"], sub["loss"], marker="o", ms=3, color=method_color(model),
                        label=f"{model} ({label})")
            ax.set(xlabel="optimizer step", ylabel="training loss (lower is better)", title=f"recipe {recipe}")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
        finish_figure(fig, "Pretraining loss (each recipe's own objective; not comparable across recipes)")
        save_figure(fig, out)
    return data

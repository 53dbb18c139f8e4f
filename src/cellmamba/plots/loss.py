"""Pretraining loss curves: one panel per recipe, the Mamba model and its Transformer peer."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ..errors import InputError
from .theme import finish_figure, method_color, method_order, save_figure, style

__all__ = ["loss_curves", "loss_curve"]

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
    data = _read_losses(metrics_csvs)
    _draw(data, out, title="Pretraining loss (each recipe's own objective; not comparable across recipes)")
    return data


def loss_curve(metrics_csv: str | os.PathLike, png: str | os.PathLike, *, name: str | None = None,
               title: str = "Training loss") -> Path | None:
    """One run's training loss vs step as a PNG, drawn as :func:`loss_curves` draws (what the
    training loop writes beside its ``metrics.csv``).

    Parameters
    ----------
    metrics_csv
        The run's metrics CSV (columns ``step``, ``loss``); an InputError as in :func:`loss_curves`.
    png
        Output PNG (no PDF).
    name
        The curve's label (default: the CSV's folder name).
    title
        Figure title.

    Returns
    -------
    ``png``, or None (logged) where matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.info("matplotlib is not installed: no loss-curve plot")
        return None
    data = _read_losses({name or Path(metrics_csv).parent.name: metrics_csv})
    _draw(data, png, title=title, formats=("png",))
    return Path(png)


def _read_losses(metrics_csvs) -> pd.DataFrame:
    """``model``, ``recipe``, ``step``, ``loss`` of each file (see :func:`loss_curves`)."""
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
        frames.append(pd.DataFrame({"model": model, "recipe": model.removesuffix("_transformer").removesuffix("_u"),
                                    "step": frame["step"].to_numpy(), "loss": frame["loss"].to_numpy(float)}))
    if not frames:
        raise InputError(f"no pretraining metrics file has training rows: {empty} (failed runs? rerun their "
                         "pretrain jobs)")
    return pd.concat(frames, ignore_index=True)


def _draw(data: pd.DataFrame, out: str | os.PathLike, *, title: str, formats: Sequence[str] = ("png", "pdf")) -> None:
    """One panel per recipe (the model, its ``_transformer`` peer and its ``_u`` unidirectional
    ablation), saved as ``out`` in ``formats``."""
    import matplotlib.pyplot as plt

    recipes = list(dict.fromkeys(data["recipe"]))
    with style():
        fig, axes = plt.subplots(1, len(recipes), squeeze=False, figsize=(4.6 * len(recipes), 4.4))
        for ax, recipe in zip(axes[0], recipes):
            block = data[data["recipe"] == recipe]
            for model in method_order(block["model"]):
                sub = block[block["model"] == model]
                label = ("Transformer peer" if model.endswith("_transformer")
                         else "Mamba, forward only" if model.endswith("_u") else "Mamba")
                ax.plot(sub["step"], sub["loss"], marker="o", ms=3, color=method_color(model),
                        label=f"{model} ({label})")
            ax.set(xlabel="optimizer step", ylabel="training loss (lower is better)", title=f"recipe {recipe}")
            ax.grid(alpha=0.3)
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
        finish_figure(fig, title)
        save_figure(fig, out, formats=formats)

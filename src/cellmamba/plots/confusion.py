"""Row-normalised confusion matrices of annotation, one panel per method."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .theme import files_by_method, finish_figure, title_color, save_figure, style

__all__ = ["confusion_heatmaps"]


def _read_confusion(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    if frame.empty or not all(np.issubdtype(t, np.number) for t in frame.dtypes):
        raise InputError(f"{path}: expected a confusion matrix CSV (first column true labels, one numeric column "
                         "per predicted label)")
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def confusion_heatmaps(confusion_csvs, out: str | os.PathLike, *, title: str = "", simulated: bool = False,
                       annotate_max: int = 15) -> pd.DataFrame:
    """Row-normalised confusion matrices of one dataset, one panel per method.

    Parameters
    ----------
    confusion_csvs
        Mapping method -> confusion CSV, or a list of ``.../<method>/seed<s>/confusion.csv``
        (first column: true label; columns: predicted labels; counts).
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    title, simulated
        Figure title (dataset) and whether the data are simulated.
    annotate_max
        Counts are written in the cells when there are at most this many classes.

    Returns
    -------
    pandas.DataFrame
        One row per method x true x predicted: ``count`` and ``fraction`` (count / row total;
        NaN for a class without query cells).
    """
    files = files_by_method(confusion_csvs)
    mats = {m: _read_confusion(p) for m, p in files.items()}
    rows_l = list(dict.fromkeys(label for m in mats.values() for label in m.index))
    cols_l = list(dict.fromkeys(rows_l + [label for m in mats.values() for label in m.columns]))
    frames = []
    for method, mat in mats.items():
        mat = mat.reindex(index=rows_l, columns=cols_l, fill_value=0)
        total = mat.sum(axis=1)
        frac = mat.div(total.where(total > 0), axis=0)
        long = mat.stack().rename("count").to_frame().join(frac.stack().rename("fraction"))
        long.index.names = ["true", "predicted"]
        frames.append(long.reset_index().assign(method=method))
    data = pd.concat(frames, ignore_index=True)[["method", "true", "predicted", "count", "fraction"]]

    import matplotlib.pyplot as plt

    def wrap(s):
        return "\n".join(textwrap.wrap(s, 18, break_on_hyphens=False, break_long_words=False)) or s

    methods = list(mats)
    ncol = min(3, len(methods))
    nrow = -(-len(methods) // ncol)
    side = max(3.2, 0.42 * len(cols_l) + 1.6)
    with style():
        fig, axes = plt.subplots(nrow, ncol, squeeze=False, figsize=(side * ncol + 1.2, side * nrow + 1.0))
        im = None
        for k, method in enumerate(methods):
            ax = axes[k // ncol, k % ncol]
            block = data[data["method"] == method]
            frac = block.pivot(index="true", columns="predicted", values="fraction").reindex(index=rows_l,
                                                                                              columns=cols_l)
            count = block.pivot(index="true", columns="predicted", values="count").reindex(index=rows_l,
                                                                                            columns=cols_l)
            im = ax.imshow(frac.to_numpy(float), cmap="Blues", vmin=0, vmax=1, aspect="auto")
            if len(cols_l) <= annotate_max:
                for (a, b), v in np.ndenumerate(count.to_numpy()):
                    if v:
                        f = frac.to_numpy(float)[a, b]
                        ax.text(b, a, f"{int(v)}", ha="center", va="center", fontsize=8,
                                color="white" if f > 0.6 else "black")
            ax.set_xticks(range(len(cols_l)), [wrap(c) for c in cols_l], rotation=60, ha="right",
                          rotation_mode="anchor", fontsize=8)
            ax.set_yticks(range(len(rows_l)), [wrap(c) for c in rows_l] if k % ncol == 0 else [], fontsize=8)
            ax.set_title(method, color=title_color(method), fontweight="bold")
            ax.set_xlabel("predicted")
            if k % ncol == 0:
                ax.set_ylabel("true cell type")
        for k in range(len(methods), nrow * ncol):
            axes[k // ncol, k % ncol].axis("off")
        finish_figure(fig, f"{title or 'annotation'}: confusion matrices on the query split "
                "(colour: row-normalised; numbers: cell counts)" + (" (simulated)" if simulated else ""), right=1.1)
        w = fig.get_size_inches()[0]
        cax = fig.add_axes((1 - 0.8 / w, 0.3, 0.15 / w, 0.4))
        fig.colorbar(im, cax=cax, label="fraction of the true class")
        save_figure(fig, out)
    return data

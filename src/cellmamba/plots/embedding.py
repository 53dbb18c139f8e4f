"""UMAP grids of cell embeddings (integration, multi-omics), methods as columns."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..keys import OBSM_EMBEDDING, UNS
from .theme import files_by_method, finish_figure, title_color, save_figure, style

__all__ = ["embedding_umaps"]


def _categorical_colors(values: pd.Series) -> dict:
    import matplotlib.pyplot as plt

    cats = list(pd.Categorical(values.astype(str)).categories)
    cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(cats)}


def _umap(emb: np.ndarray, seed: int) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(emb))]))
    a.obsm[OBSM_EMBEDDING] = np.asarray(emb, dtype=np.float32)
    sc.pp.neighbors(a, use_rep=OBSM_EMBEDDING, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def _read_embedding(path: Path) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """(obs, embedding, paired): a paired file's two modalities stacked, obs ``modality`` set."""
    from ..io import read_h5ad_plain, read_paired_embedding

    a = read_h5ad_plain(path, "an embedding h5ad (obsm['X_emb'] or obsm['X_<method>_<modality>'] x 2)")
    if OBSM_EMBEDDING in a.obsm:
        if a.uns.get(UNS, {}).get("joint"):  # one joint latent of both modalities per cell (totalVI)
            return a.obs.assign(modality="joint"), np.asarray(a.obsm[OBSM_EMBEDDING]), True
        return a.obs.copy(), np.asarray(a.obsm[OBSM_EMBEDDING]), False
    if len(a.uns.get(UNS, {}).get("modalities", [])) == 2:
        obs, mods, x, y = read_paired_embedding(path)
        stacked = pd.concat([obs.assign(modality=m) for m in mods])
        stacked.index = [f"{c}|{m}" for m in mods for c in obs.index]
        return stacked, np.vstack([x, y]), True
    raise InputError(f"{path}: no obsm['X_emb'] and no paired obsm['X_<method>_<modality>']; found {list(a.obsm)}")


def embedding_umaps(embedding_files, out: str | os.PathLike, *, color: Sequence[str] = ("cell_type", "batch"),
                    title: str = "", simulated: bool = False, seed: int = 0) -> pd.DataFrame:
    """UMAP grid of one dataset's embeddings: methods as columns, colour keys as rows.

    Parameters
    ----------
    embedding_files
        Mapping method -> embedding h5ad, or a list of ``.../<method>/seed<s>/embedding.h5ad``
        (the first file of each method is drawn). Integration files: obsm['X_emb'] (n_cells, d).
        Multi-omics files (obsm['X_<method>_<modality>'] x 2): both modalities' embeddings are stacked
        (2 n_cells rows) and the colour ``batch`` is replaced by ``modality``.
    out
        Figure path; ``.png`` and ``.pdf`` are written.
    color
        obs columns to colour by, one row of panels each.
    title, simulated
        Figure title (dataset, task) and whether the data are simulated (added to the title).
    seed
        Seed of the neighbour graph and UMAP.

    Returns
    -------
    pandas.DataFrame
        One row per method x cell: ``method``, ``cell``, ``umap1``, ``umap2`` and the colour columns.
    """
    files = files_by_method(embedding_files)
    frames = []
    paired_any = False
    for method, path in files.items():
        obs, emb, paired = _read_embedding(path)
        paired_any |= paired
        keys = [("modality" if paired and c == "batch" else c) for c in color]
        missing = [c for c in keys if c not in obs]
        if missing:
            raise InputError(f"{path}: obs lacks colour columns {missing}; has {list(obs.columns)}")
        xy = _umap(emb, seed)
        frame = pd.DataFrame({"method": method, "cell": obs.index.astype(str), "umap1": xy[:, 0],
                              "umap2": xy[:, 1]})
        for c in keys:
            frame[c] = obs[c].astype(str).to_numpy()
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    keys = [("modality" if paired_any and c == "batch" else c) for c in color]

    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods = list(files)
    with style():
        fig, axes = plt.subplots(len(keys), len(methods), squeeze=False,
                                 figsize=(2.8 * len(methods) + 2.2, 2.8 * len(keys) + 0.8))
        rng = np.random.default_rng(seed)
        for i, key in enumerate(keys):
            colors = _categorical_colors(data[key])
            for j, method in enumerate(methods):
                ax = axes[i, j]
                block = data[data["method"] == method]
                block = block.iloc[rng.permutation(len(block))]  # no category painted over the others by order
                ax.scatter(block["umap1"], block["umap2"], s=max(2.0, 3000 / len(block)), lw=0,
                           c=[colors[v] for v in block[key]], rasterized=True)
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ("top", "right"):
                    ax.spines[side].set_visible(True)
                if i == 0:
                    ax.set_title(method, color=title_color(method), fontweight="bold")
                if j == 0:
                    ax.set_ylabel(f"colour: {key}")
            handles = [Line2D([], [], ls="", marker="o", color=c, label=textwrap.shorten(str(k), 28))
                       for k, c in colors.items()]
            axes[i, -1].legend(handles=handles, title=key, loc="upper left", bbox_to_anchor=(1.02, 1),
                               frameon=False, ncol=1 if len(handles) <= 14 else 2, markerscale=1.2)
        n_cells = data.groupby("method").size().iloc[0]
        what = "both modalities' embeddings of each cell" if paired_any else "cell embeddings"
        finish_figure(fig, f"{title or 'UMAP'}: {what} ({n_cells:,} points per panel)"
                + (" (simulated)" if simulated else ""))
        save_figure(fig, out)
    return data

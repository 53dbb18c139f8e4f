"""Multi-omics alignment metrics (DESIGN.md "Metrics"): FOSCTTM, omics mixing entropy,
label transfer.

Inputs are embeddings of the SAME cells measured in two modalities, row i of ``x`` and row i of
``y`` being one cell (its true match).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ._common import Scores, as_labels, as_matrix

__all__ = ["foscttm", "foscttm_per_cell", "mixing_entropy", "label_transfer_accuracy",
           "score_multiomics", "score_paired_embedding_file", "seurat_alignment_score", "MULTIOMICS_METRICS",
           "METRICS", "CROSS_MODAL_METRICS"]

#: the multi-omics table's metrics, in order -> direction (:mod:`.rows`)
METRICS = {"foscttm": "lower", "omics_mixing_entropy": "higher", "seurat_alignment": "higher", "nmi": "higher",
           "ari": "higher", "label_transfer": "higher", "label_transfer_1to2": "higher", "label_transfer_2to1": "higher"}
#: the multi-omics table's metrics, in order
MULTIOMICS_METRICS = tuple(METRICS)

_METRICS = ("euclidean", "cosine")


def _pair(x, y):
    x = as_matrix(x, name="x")
    y = as_matrix(y, name="y")
    if x.shape != y.shape:
        raise InputError(f"x and y must be paired embeddings of the same shape; got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise InputError(f"FOSCTTM needs at least 2 cells, got {x.shape[0]}")
    return x, y


def _distances(a, b, metric):
    # scipy's cdist evaluates every pair with the direct formula (no |a|^2 - 2ab + |b|^2
    # shortcut), so a pair's distance is bit-identical whatever block it is computed in
    from scipy.spatial.distance import cdist

    return cdist(a, b, metric=metric)


def foscttm_per_cell(x, y, *, metric: str = "euclidean", block_size: int = 2048) -> np.ndarray:
    """Per-cell FOSCTTM, both directions averaged.

    For cell i, ``(#{j: d(x_i, y_j) < d(x_i, y_i)} + #{j: d(y_i, x_j) < d(y_i, x_i)}) / (2 (n - 1))``:
    the fraction of the other modality's cells that lie strictly closer than the true match,
    from x to y and from y to x, averaged (SCOT's ``calc_domainAveraged_FOSCTTM``; ties do not
    count). 0 = every true match is the nearest.

    Parameters
    ----------
    x, y
        (n_cells, n_dims) paired embeddings.
    metric
        ``euclidean`` or ``cosine``.
    block_size
        Rows of the (block_size, n_cells) distance block held in memory at once.

    Returns
    -------
    numpy.ndarray
        (n_cells,) values in [0, 1].
    """
    if metric not in _METRICS:
        raise InputError(f"metric must be one of {_METRICS}, got {metric!r}")
    x, y = _pair(x, y)
    n = x.shape[0]
    diag = np.empty(n)
    for start in range(0, n, block_size):       # d(x_i, y_i) with the same routine as the blocks
        stop = min(start + block_size, n)
        block = _distances(x[start:stop], y[start:stop], metric)
        diag[start:stop] = np.diagonal(block)
    closer_x = np.zeros(n, dtype=np.int64)      # direction x -> y, per row i
    closer_y = np.zeros(n, dtype=np.int64)      # direction y -> x, per column i
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        D = _distances(x[start:stop], y, metric)           # D[r, j] = d(x_{start+r}, y_j)
        rows = np.arange(stop - start)
        D[rows, rows + start] = np.inf                     # never compare the true match with itself
        closer_x[start:stop] = (D < diag[start:stop, None]).sum(axis=1)
        closer_y += (D < diag[None, :]).sum(axis=0)        # d(y_j, x_r) < d(y_j, x_j)
    return (closer_x + closer_y) / (2.0 * (n - 1))


def foscttm(x, y, *, metric: str = "euclidean") -> float:
    """FOSCTTM: mean of :func:`foscttm_per_cell` over cells (lower is better; 0 = perfect)."""
    return float(foscttm_per_cell(x, y, metric=metric).mean())


def mixing_entropy(embedding, modality, *, k: int = 50) -> float:
    """Omics mixing entropy of a joint embedding, in [0, 1] (1 = modalities fully mixed).

    For each cell, take its ``k`` nearest neighbours (Euclidean, the cell itself excluded) in
    the joint embedding, the proportions p_m of each modality m among them, and the entropy
    ``H = -sum_m p_m log p_m`` divided by ``log(M)``, M = number of modalities present in
    ``modality``. The score is the mean over all cells. With equally many cells per modality,
    perfectly mixed modalities give values near 1 and separated ones 0.

    Parameters
    ----------
    embedding
        (n_cells, n_dims) joint embedding of the cells of every modality (stacked).
    modality
        (n_cells,) modality label of each row.
    k
        Neighbourhood size (capped at n_cells - 1).
    """
    from sklearn.neighbors import NearestNeighbors

    emb = as_matrix(embedding, name="embedding")
    mod = as_labels(modality, name="modality")
    if len(mod) != emb.shape[0]:
        raise InputError(f"modality has {len(mod)} labels for {emb.shape[0]} cells")
    cats, codes = np.unique(mod, return_inverse=True)
    if len(cats) < 2:
        raise InputError(f"modality: mixing entropy needs at least 2 modalities, found {list(cats)}")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    k = min(k, emb.shape[0] - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(emb)
    _, idx = nn.kneighbors(emb)
    # drop the cell itself (first column unless duplicates put another cell first)
    self_col = idx == np.arange(emb.shape[0])[:, None]
    has_self = self_col.any(axis=1)
    keep = np.where(has_self[:, None], ~self_col, np.arange(k + 1)[None, :] < k)
    neigh = idx[keep].reshape(emb.shape[0], k)
    counts = np.zeros((emb.shape[0], len(cats)))
    np.add.at(counts, (np.repeat(np.arange(emb.shape[0]), k), codes[neigh].ravel()), 1)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(np.mean(h / np.log(len(cats))))


def label_transfer_accuracy(source, target, *, source_labels, target_labels, k: int = 5) -> float:
    """Accuracy of kNN label transfer from one modality's cells to the other's.

    A k-nearest-neighbour majority vote (Euclidean, uniform weights; sklearn's
    ``KNeighborsClassifier``, ties to the first label in sorted order) is fit on ``source``
    with ``source_labels`` and predicts ``target``; the score is the fraction matching
    ``target_labels``.

    Parameters
    ----------
    source, target
        (n_source, n_dims) and (n_target, n_dims) embeddings in one joint space.
    source_labels, target_labels
        (n_source,) and (n_target,) cell-type labels.
    k
        Neighbours voting (capped at n_source).
    """
    from sklearn.neighbors import KNeighborsClassifier

    src = as_matrix(source, name="source")
    tgt = as_matrix(target, name="target")
    if src.shape[1] != tgt.shape[1]:
        raise InputError(f"source and target have {src.shape[1]} and {tgt.shape[1]} dimensions")
    ys = as_labels(source_labels, name="source_labels")
    yt = as_labels(target_labels, name="target_labels")
    if len(ys) != src.shape[0] or len(yt) != tgt.shape[0]:
        raise InputError(f"labels: {len(ys)} / {len(yt)} labels for {src.shape[0]} / {tgt.shape[0]} cells")
    clf = KNeighborsClassifier(n_neighbors=min(k, src.shape[0])).fit(src, ys)
    return float(np.mean(clf.predict(tgt) == yt))


def seurat_alignment_score(embedding, groups, *, neighbor_frac: float = 0.01, n_repeats: int = 4,
                           seed: int = 0) -> float:
    """Seurat's alignment score (Butler et al. 2018) of groups (datasets, modalities) in one space.

    Every group is subsampled (without replacement, seeded) to the smallest group's size; for
    each cell of the subsample, x = how many of its k nearest neighbours (Euclidean, the cell
    itself excluded; k = ``max(round(neighbor_frac * n_subsampled), 1)``, 1% of the cells as in
    the paper) belong to its own group; the score is ``1 - (mean(x) - k/N) / (k - k/N)`` for N
    groups, capped at 1 (a mean below chance would exceed 1), averaged over ``n_repeats``
    subsamples (GLUE's ``seurat_alignment_score``). 0 = groups fully separated, 1 = as mixed as
    chance. With groups of equal size (the two modalities of paired cells) every subsample holds
    every cell, so the score does not depend on the seed.

    Parameters
    ----------
    embedding
        (n_cells, n_dims) joint space of the cells of every group (stacked).
    groups
        (n_cells,) group of each row (at least 2 distinct).
    neighbor_frac
        k as a fraction of the subsampled cells, in (0, 1).
    n_repeats, seed
        Subsamples averaged, and their seed.
    """
    from sklearn.neighbors import NearestNeighbors

    emb = as_matrix(embedding, name="embedding")
    grp = as_labels(groups, name="groups")
    if len(grp) != emb.shape[0]:
        raise InputError(f"groups has {len(grp)} labels for {emb.shape[0]} cells")
    cats = np.unique(grp)
    if len(cats) < 2:
        raise InputError(f"groups: the alignment score needs at least 2 groups, found {list(cats)}")
    if not 0 < neighbor_frac < 1:
        raise InputError(f"neighbor_frac must be in (0, 1), got {neighbor_frac}")
    if n_repeats < 1:
        raise InputError(f"n_repeats must be >= 1, got {n_repeats}")
    index = [np.flatnonzero(grp == c) for c in cats]
    size = min(len(i) for i in index)
    n_groups = len(cats)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_repeats):
        sub = np.concatenate([np.sort(rng.choice(i, size, replace=False)) for i in index])
        k = min(max(int(round(neighbor_frac * len(sub))), 1), len(sub) - 1)
        idx = NearestNeighbors(n_neighbors=k + 1).fit(emb[sub]).kneighbors(emb[sub], return_distance=False)
        own = np.arange(len(sub))[:, None]
        # drop the cell itself (its first column unless a duplicate point came first)
        self_col = idx == own
        keep = np.where(self_col.any(axis=1)[:, None], ~self_col, np.arange(k + 1)[None, :] < k)
        neigh = idx[keep].reshape(len(sub), k)
        same = (grp[sub][neigh] == grp[sub][:, None]).sum(axis=1).mean()
        scores.append(min(1.0 - (same - k / n_groups) / (k - k / n_groups), 1.0))
    return float(np.mean(scores))


def score_multiomics(x, y, *, labels: Sequence[str] | None = None, mixing_k: int = 50,
                     transfer_k: int = 5, metric: str = "euclidean") -> Scores:
    """FOSCTTM, omics mixing entropy and label transfer of paired embeddings.

    Parameters
    ----------
    x, y
        (n_cells, n_dims) embeddings of the same cells from modality 1 and modality 2.
    labels
        (n_cells,) cell types; None leaves ``label_transfer_*`` NaN.
    mixing_k, transfer_k, metric
        See :func:`mixing_entropy`, :func:`label_transfer_accuracy`, :func:`foscttm`.

    Returns
    -------
    Scores
        ``foscttm`` (lower is better), ``omics_mixing_entropy`` (on the stacked ``[x; y]``),
        ``label_transfer_1to2``, ``label_transfer_2to1`` and ``label_transfer`` (their mean).
    """
    x, y = _pair(x, y)
    scores = Scores({"foscttm": foscttm(x, y, metric=metric),
                     "omics_mixing_entropy": mixing_entropy(np.vstack([x, y]), ["1"] * len(x) + ["2"] * len(y),
                                                            k=mixing_k)})
    if labels is None:
        for name in ("label_transfer_1to2", "label_transfer_2to1", "label_transfer"):
            scores.skip(name, "no cell-type labels given")
        return scores
    scores["label_transfer_1to2"] = label_transfer_accuracy(x, y, source_labels=labels, target_labels=labels, k=transfer_k)
    scores["label_transfer_2to1"] = label_transfer_accuracy(y, x, source_labels=labels, target_labels=labels, k=transfer_k)
    scores["label_transfer"] = (scores["label_transfer_1to2"] + scores["label_transfer_2to1"]) / 2
    return scores


#: the metrics that compare the two modalities' embeddings of a cell (not computed for a joint latent)
CROSS_MODAL_METRICS = ("foscttm", "omics_mixing_entropy", "seurat_alignment", "label_transfer", "label_transfer_1to2",
                       "label_transfer_2to1")


def score_paired_embedding_file(path, *, seed: int = 0, label_key: str = "cell_type") -> Scores:
    """Multi-omics metrics of one method's paired (or joint) embedding file.

    Parameters
    ----------
    path
        h5ad of :func:`cellmamba.io.write_paired_embedding`: both modalities' embeddings of every
        cell (row i = the same cell), obs ``label_key``; or a joint file
        (:func:`cellmamba.baselines.multiomics.write_joint_embedding`: ``uns["cellmamba"]["joint"]``
        True, one latent per cell in ``obsm["X_emb"]``).
    seed
        Seed of the kNN graph and Leiden (fixed for every run).

    Returns
    -------
    Scores
        Paired file: :func:`score_multiomics` on the two embeddings as written (FOSCTTM, omics
        mixing entropy, label transfer both ways), :func:`seurat_alignment_score` of the two
        modalities' stacked embeddings, plus ``nmi`` / ``ari`` of the joint embedding:
        each cell's two L2-normalised embeddings concatenated, clustered with scib's
        optimal-resolution Leiden (:func:`cellmamba.metrics.integration.cluster_agreement`).
        Joint file: ``nmi`` / ``ari`` of the L2-normalised joint latent (as every embedding is
        L2-normalised before clustering here); :data:`CROSS_MODAL_METRICS` NaN with a note (there
        is one embedding per cell, not one per modality, so FOSCTTM would be 0 by construction).
    """
    from ..io import read_h5ad_plain, read_paired_embedding
    from ..keys import OBSM_EMBEDDING, UNS
    from .integration import cluster_agreement, l2_normalize

    a = read_h5ad_plain(path, "a paired-embedding h5ad (obsm['X_<method>_<modality>'] x 2, or a joint obsm['X_emb'])")
    info = a.uns.get(UNS, {})
    joint_file = bool(info.get("joint", False))
    if joint_file:
        if OBSM_EMBEDDING not in a.obsm:
            raise InputError(f"{path}: a joint embedding file (uns['{UNS}']['joint']) without obsm['{OBSM_EMBEDDING}']; "
                             f"found {list(a.obsm)}")
        obs = a.obs
    else:
        obs, mods, x, y = read_paired_embedding(path)
    if label_key not in obs:
        raise InputError(f"{path}: obs['{label_key}'] (cell types) is missing; found {list(obs.columns)}")
    labels = obs[label_key].astype(str).to_numpy()
    if joint_file:
        scores = Scores()
        reason = (f"{info.get('method', 'this method')} gives one joint latent per cell, not one embedding per "
                  "modality: nothing to compare across modalities (FOSCTTM would be 0 by construction)")
        for name in CROSS_MODAL_METRICS:
            scores.skip(name, reason)
        joint = l2_normalize(a.obsm[OBSM_EMBEDDING])
    else:
        scores = score_multiomics(x, y, labels=labels)
        # scMamba and GLUE report it beside the mixing entropy: the two modalities' cells in one space
        scores["seurat_alignment"] = seurat_alignment_score(np.vstack([x, y]), ["1"] * len(x) + ["2"] * len(y),
                                                            seed=seed)
        joint = np.hstack([l2_normalize(x), l2_normalize(y)])
    scores.update(cluster_agreement(joint, labels, seed=seed, normalize=False))
    return Scores({k: scores[k] for k in MULTIOMICS_METRICS}, notes=scores.notes)

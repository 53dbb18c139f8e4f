"""Annotation baselines (reference -> query) on the models' split: logistic regression on the
log-normalised genes and kNN on a reference PCA.

Both train on the obs ``split == "reference"`` cells only and predict the ``query`` cells, on
every gene of the dataset file (the annotation files are already 3,000 HVGs; DATASETS.md
§2-§4), exactly the cells and labels the fine-tuned models see (:func:`cellmamba.tasks.
run_annotation`). A query class absent from the reference can never be predicted; the scoring
reports those classes.

``logreg`` follows Boiarsky et al. 2023 (sc-foundation-eval): the log-normalised values are fed
as they are, without standardisation (they are already on one log scale; z-scoring would give
lowly expressed, noisy genes the same weight as marker genes, and would densify the matrix);
``scale=True`` divides each gene by its reference standard deviation (no centring, sparsity
kept) for those who want it. They used an L1 penalty with C chosen by 5-fold cross-validation
over 1e-3..1e4 (liblinear, one-vs-rest); our default is the multinomial L2 model with C = 1
(lbfgs, fast and deterministic), and ``penalty="l1"`` with a list of C values reproduces their
protocol with a multinomial model (saga). With two classes the multinomial model is the
ordinary logistic regression.

``knn_pca``: PCA (50 components, centred, not scaled) fit on the reference, the query projected
onto it, then a majority vote of the k = 15 nearest reference cells (Euclidean). k = 15 is
scanpy's default neighbourhood size, the one the integration metrics' graphs use on the same
data; ties between classes go to the first class in sorted label order (scikit-learn).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from .._util import seed_all
from ..datasets import log_normalized, validate_standard
from ..errors import InputError
from ..io import atomic_path, read_h5ad_checked
from ..keys import OBS_CELL_TYPE, OBS_SPLIT
from ._common import check_choice, check_positive_int, parse_settings, reference_pca, settings_dict

__all__ = ["ANNOTATION_METHODS", "LogregSettings", "KnnPcaSettings", "annotate_baseline",
           "run_annotation_baseline"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LogregSettings:
    """Settings of the ``logreg`` annotation baseline."""

    #: inverse regularisation strength; a list of values selects C by stratified k-fold
    #: cross-validation (accuracy) on the reference, ties to the smallest C
    C: float | tuple[float, ...] = 1.0
    #: "l2" (lbfgs) or "l1" (saga); both multinomial
    penalty: str = "l2"
    #: solver iterations; a fit that stops at the limit is logged as a warning
    max_iter: int = 1000
    #: divide each gene by its reference standard deviation (no centring) before fitting
    scale: bool = False
    #: folds of the cross-validation when C is a list
    cv_folds: int = 5

    def __post_init__(self):
        what = "annotation baseline 'logreg'"
        Cs = self.C if isinstance(self.C, (list, tuple)) else (self.C,)
        if not Cs or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in Cs):
            raise InputError(f"{what}: setting 'C' is {self.C!r}; expected a positive number or a list of them")
        if isinstance(self.C, list):
            object.__setattr__(self, "C", tuple(float(c) for c in self.C))
        check_choice(self.penalty, key="penalty", what=what, choices=("l2", "l1"))
        check_positive_int(self.max_iter, key="max_iter", what=what)
        check_positive_int(self.cv_folds, key="cv_folds", what=what, minimum=2)


@dataclasses.dataclass(frozen=True)
class KnnPcaSettings:
    """Settings of the ``knn_pca`` annotation baseline."""

    #: principal components of the reference PCA
    n_comps: int = 50
    #: neighbours that vote (uniform weights, Euclidean distance in PC space)
    n_neighbors: int = 15

    def __post_init__(self):
        check_positive_int(self.n_comps, key="n_comps", what="annotation baseline 'knn_pca'")
        check_positive_int(self.n_neighbors, key="n_neighbors", what="annotation baseline 'knn_pca'")


ANNOTATION_METHODS = {"logreg": LogregSettings, "knn_pca": KnnPcaSettings}


def _logreg(X_ref, y_ref: np.ndarray, X_query, settings: LogregSettings, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.preprocessing import StandardScaler

    if settings.scale:
        scaler = StandardScaler(with_mean=False).fit(X_ref)
        X_ref, X_query = scaler.transform(X_ref), scaler.transform(X_query)

    def model(C: float):
        # sklearn >= 1.8: l1_ratio 0 is the L2 penalty, 1 the L1; lbfgs / saga fit the
        # multinomial (softmax) model whenever there are more than two classes
        return LogisticRegression(C=C, l1_ratio=1.0 if settings.penalty == "l1" else 0.0,
                                  solver="saga" if settings.penalty == "l1" else "lbfgs",
                                  max_iter=settings.max_iter, random_state=seed)

    Cs = settings.C if isinstance(settings.C, tuple) else (settings.C,)
    C = Cs[0]
    if len(Cs) > 1:
        smallest = int(np.bincount(y_ref).min())
        if smallest < settings.cv_folds:
            raise InputError(f"annotation baseline 'logreg': choosing C by {settings.cv_folds}-fold "
                             f"cross-validation needs >= {settings.cv_folds} reference cells per class; the "
                             f"smallest class has {smallest} (give one C or fewer cv_folds)")
        folds = StratifiedKFold(n_splits=settings.cv_folds, shuffle=True, random_state=seed)
        scores = [float(np.mean(cross_val_score(model(c), X_ref, y_ref, cv=folds, scoring="accuracy")))
                  for c in sorted(Cs)]
        C = sorted(Cs)[int(np.argmax(scores))]
        log.info("logreg: cross-validated accuracy %s -> C = %g",
                 dict(zip(sorted(Cs), np.round(scores, 4))), C)
    clf = model(C).fit(X_ref, y_ref)
    if np.max(clf.n_iter_) >= settings.max_iter:
        log.warning("logreg: the solver stopped at max_iter=%d before converging; raise max_iter",
                    settings.max_iter)
    return clf.predict(X_query)


def _knn_pca(X_ref, y_ref: np.ndarray, X_query, settings: KnnPcaSettings, seed: int) -> np.ndarray:
    from sklearn.neighbors import KNeighborsClassifier

    if settings.n_neighbors > X_ref.shape[0]:
        raise InputError(f"annotation baseline 'knn_pca': n_neighbors is {settings.n_neighbors} but the "
                         f"reference has {X_ref.shape[0]} cells")
    Z_ref, Z_query, _ = reference_pca(X_ref, X_query, n_comps=settings.n_comps, seed=seed,
                                      what="annotation baseline 'knn_pca'")
    knn = KNeighborsClassifier(n_neighbors=settings.n_neighbors, weights="uniform", metric="euclidean")
    return knn.fit(Z_ref, y_ref).predict(Z_query)


def annotate_baseline(adata, method: str, *, seed: int, **settings: Any) -> pd.DataFrame:
    """Train a baseline classifier on the reference cells, predict the query cells.

    Parameters
    ----------
    adata
        Standard-schema dataset (n_cells, n_genes) with obs ``cell_type`` and ``split``
        (``reference`` / ``query``); X or layer ``counts`` gives the log-normalised values
        (:func:`cellmamba.datasets.log_normalized`). Every gene is used.
    method
        ``"logreg"`` (:class:`LogregSettings`) or ``"knn_pca"`` (:class:`KnnPcaSettings`).
    seed
        Seeds the solver, the cross-validation folds and the ARPACK start vector.
    **settings
        Fields of the method's settings class; an unknown key is an InputError.

    Returns
    -------
    DataFrame with one row per cell in dataset order and columns ``cell`` (obs name),
    ``split``, ``cell_type`` (truth) and ``predicted`` (a reference label for query cells,
    ``""`` for every other cell).
    """
    seed_all(seed)
    if method not in ANNOTATION_METHODS:
        raise InputError(f"annotation baseline: method is {method!r}; expected one of {list(ANNOTATION_METHODS)}")
    config = parse_settings(ANNOTATION_METHODS[method], settings, what=f"annotation baseline {method!r}")
    validate_standard(adata, "annotation", source=f"annotation baseline {method!r}")
    split = adata.obs[OBS_SPLIT].astype(str).to_numpy()
    truth = adata.obs[OBS_CELL_TYPE].astype(str).to_numpy()
    ref = np.flatnonzero(split == "reference")
    query = np.flatnonzero(split == "query")
    classes, y_ref = np.unique(truth[ref], return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"annotation baseline {method!r}: obs['{OBS_CELL_TYPE}'] of the reference cells has "
                         f"{len(classes)} value(s) {list(classes)}; a classifier needs at least two")
    X = log_normalized(adata, source=f"annotation baseline {method!r}")
    X_ref, X_query = X[ref], X[query]
    log.info("annotation baseline %s: %d reference / %d query cells, %d genes, %d classes, settings %s",
             method, len(ref), len(query), X.shape[1], len(classes), settings_dict(config))
    fit = _logreg if method == "logreg" else _knn_pca
    codes = fit(X_ref, y_ref, X_query, config, seed)
    predicted = np.full(adata.n_obs, "", dtype=object)
    predicted[query] = classes[codes]
    return pd.DataFrame({"cell": adata.obs_names.astype(str), "split": split, "cell_type": truth,
                         "predicted": predicted})


def run_annotation_baseline(dataset: str | os.PathLike, predictions: str | os.PathLike, *, method: str,
                            seed: int, settings: dict | None = None) -> pd.DataFrame:
    """Read a standard-schema h5ad, run :func:`annotate_baseline`, write the CSV atomically.

    Parameters
    ----------
    dataset
        Path of the dataset (.h5ad).
    predictions
        Output CSV with columns ``cell``, ``split``, ``cell_type``, ``predicted``.
    method, seed, settings
        As :func:`annotate_baseline` (settings as a dict).
    """
    adata = read_h5ad_checked(dataset)
    table = annotate_baseline(adata, method, seed=seed, **(settings or {}))
    with atomic_path(predictions) as tmp:
        table.to_csv(tmp, index=False)
    query = table["split"] == "query"
    log.info("annotation baseline %s: query accuracy %.4f (%d cells) -> %s", method,
             float((table.loc[query, "predicted"] == table.loc[query, "cell_type"]).mean()), int(query.sum()),
             predictions)
    return table

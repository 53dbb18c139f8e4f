"""Annotation metrics on the query split: sklearn's, over one class set per dataset.

The macro averages (precision, recall, F1) are taken over the classes of the query's true
labels. That set is the same for every method scored on a dataset, so the macro columns compare
across a table's rows. A predicted class absent from the query costs its cells' recall but
adds no term of its own. A query-only class (absent from the reference, so never predictable
by a classifier trained on it) enters with recall 0 for every method alike.
:func:`query_only_classes` names those classes, and ``n_query_only_classes`` /
``query_only_cell_fraction`` report them apart.

Departure from scGPT / SC-MAMBA2 (DATASETS.md §0.3): they call sklearn without ``labels=``,
which averages over the union of true AND predicted classes, so the denominator depends on
what each method predicted. On one dataset we measured 5 / 4 / 6 classes for three methods.
``f1_macro_union`` is that computation (labels as integer codes over the concatenated
reference + query categories, as scGPT codes them). It is kept for comparison with published
numbers and is never ranked. Where a method predicts only classes present in the query, the two
agree.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from ._common import Scores, as_labels

__all__ = ["METRICS", "ANNOTATION_METRICS", "PREDICTION_COLUMNS", "score_annotation", "score_predictions", "confusion",
           "query_only_classes", "label_codes"]

#: the metrics :func:`score_annotation` returns, in table order -> direction (:mod:`.rows`): the
#: class counts and the query-only fraction describe the split and are never ranked
METRICS = {"accuracy": "higher", "precision_macro": "higher", "recall_macro": "higher", "f1_macro": "higher",
           "f1_micro": "higher", "f1_macro_union": "unranked", "n_classes_macro": "unranked", "n_query_only_classes": "unranked",
           "query_only_cell_fraction": "unranked"}
#: names returned by :func:`score_annotation`, in table order
ANNOTATION_METRICS = tuple(METRICS)


def label_codes(reference_labels, query_labels) -> pd.CategoricalDtype:
    """Categories of the concatenated reference + query labels (scGPT's ``celltype_id`` codes).

    The categories are the sorted union, the codes positions in it. The codes change no metric
    (only the label set does); they exist so the computation matches scGPT's step by step.
    """
    ref = as_labels(reference_labels, name="reference_labels")
    qry = as_labels(query_labels, name="query labels")
    return pd.CategoricalDtype(sorted(set(ref) | set(qry)))


def query_only_classes(y_true, reference_labels) -> list[str]:
    """Classes present among the query's true labels but absent from the reference (sorted)."""
    truth = as_labels(y_true, name="y_true")
    ref = set(as_labels(reference_labels, name="reference_labels"))
    return sorted(set(truth) - ref)


def _check_pair(y_true, y_pred):
    truth = as_labels(y_true, name="y_true")
    pred = as_labels(y_pred, name="y_pred")
    if len(truth) != len(pred):
        raise InputError(f"y_true has {len(truth)} labels but y_pred has {len(pred)}")
    if len(truth) == 0:
        raise InputError("y_true is empty: no query cells to score")
    return truth, pred


def score_annotation(y_true, y_pred, *, reference_labels) -> Scores:
    """Accuracy, macro precision / recall / F1 and micro F1 of query predictions.

    Parameters
    ----------
    y_true, y_pred
        (n_query,) true and predicted cell-type labels of the query cells.
    reference_labels
        Labels of the reference (training) cells: only their set matters (the category codes
        and the query-only classes).

    Returns
    -------
    Scores
        ``accuracy``, ``precision_macro``, ``recall_macro``, ``f1_macro`` (macro averages over the
        classes of ``y_true``, ``zero_division=0``), ``f1_micro``, ``f1_macro_union`` (macro F1
        over the union of the classes of ``y_true`` and ``y_pred``: scGPT's computation, for
        published numbers), ``n_classes_macro`` (the classes of ``y_true``), ``n_query_only_classes`` and
        ``query_only_cell_fraction`` (query cells whose class the reference lacks: an upper
        bound on accuracy is 1 minus it). ``.notes["n_query_only_classes"]`` lists them.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    truth, pred = _check_pair(y_true, y_pred)
    dtype = label_codes(reference_labels, np.concatenate([truth, pred]))
    t = pd.Categorical(truth, dtype=dtype).codes
    p = pd.Categorical(pred, dtype=dtype).codes
    labels = np.unique(t)          # one class set for every method of the dataset
    macro = dict(labels=labels, average="macro", zero_division=0)
    only = query_only_classes(truth, reference_labels)
    scores = Scores({
        "accuracy": float(accuracy_score(t, p)),
        "precision_macro": float(precision_score(t, p, **macro)),
        "recall_macro": float(recall_score(t, p, **macro)),
        "f1_macro": float(f1_score(t, p, **macro)),
        # every query cell counts once, whatever was predicted: the accuracy on a single-label task
        "f1_micro": float(f1_score(t, p, labels=np.union1d(t, p), average="micro", zero_division=0)),
        # what sklearn uses when no labels= is given (scGPT's call)
        "f1_macro_union": float(f1_score(t, p, labels=np.union1d(t, p), average="macro", zero_division=0)),
        "n_classes_macro": float(len(labels)),
        "n_query_only_classes": float(len(only)),
        "query_only_cell_fraction": float(np.isin(truth, only).mean()),
    })
    if only:
        scores.notes["n_query_only_classes"] = "query-only classes: " + "; ".join(only)
    return scores


def confusion(y_true, y_pred) -> pd.DataFrame:
    """Confusion matrix of counts: rows = true label, columns = predicted label.

    Parameters
    ----------
    y_true, y_pred
        (n_cells,) labels.

    Returns
    -------
    pandas.DataFrame
        (n_labels, n_labels) int64 counts over the sorted union of both label sets; index named
        ``true``, columns named ``predicted``.
    """
    truth, pred = _check_pair(y_true, y_pred)
    labels = sorted(set(truth) | set(pred))
    index = {lab: i for i, lab in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(counts, (np.fromiter((index[x] for x in truth), np.int64, len(truth)),
                       np.fromiter((index[x] for x in pred), np.int64, len(pred))), 1)
    return pd.DataFrame(counts, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))


#: columns of a predictions file (the workflow's contract with the annotation methods)
PREDICTION_COLUMNS = ("cell", "split", "cell_type", "predicted")


def score_predictions(predictions: pd.DataFrame, *, source: str = "predictions") -> tuple[Scores, pd.DataFrame]:
    """Score a predictions table: the metrics of its query rows and their confusion matrix.

    Parameters
    ----------
    predictions
        Columns ``cell``, ``split`` (``reference`` / ``query``), ``cell_type`` (true label) and
        ``predicted`` (empty for reference rows). Reference rows supply the reference label set.
    source
        Name used in error messages (e.g. the file path).

    Returns
    -------
    (Scores, pandas.DataFrame)
        :func:`score_annotation` of the query rows and :func:`confusion` of them.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise InputError(f"{source}: columns {missing} are missing; expected {list(PREDICTION_COLUMNS)}")
    split = predictions["split"].astype(str)
    bad = sorted(set(split) - {"reference", "query"})
    if bad:
        raise InputError(f"{source}: column 'split' has values {bad}; expected 'reference' or 'query'")
    ref, qry = predictions[split == "reference"], predictions[split == "query"]
    if ref.empty or qry.empty:
        raise InputError(f"{source}: needs both reference and query rows "
                         f"({len(ref)} reference, {len(qry)} query)")
    if qry["cell"].duplicated().any():
        raise InputError(f"{source}: query cells repeat (e.g. {qry.loc[qry['cell'].duplicated(), 'cell'].iloc[0]!r})")
    try:
        y_pred = as_labels(qry["predicted"], name=f"{source}: column 'predicted' of query rows")
    except InputError as exc:
        raise InputError(f"{exc}; every query cell needs a prediction") from None
    y_true = as_labels(qry["cell_type"], name=f"{source}: column 'cell_type' of query rows")
    scores = score_annotation(y_true, y_pred, reference_labels=ref["cell_type"])
    return scores, confusion(y_true, y_pred)

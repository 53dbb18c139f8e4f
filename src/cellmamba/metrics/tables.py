"""Per-run metric rows -> benchmark tables (mean and spread over seeds).

The rows are the long frames of :mod:`.rows` (one row per metric; run identity, flag columns,
``note``). :func:`summarize` aggregates over seeds; :func:`write_table` writes the tidy CSV and a
Markdown rendering, where the best value of each metric is bold by the direction its module
declares (``METRICS`` of :mod:`.classification`, :mod:`.foscttm`, :mod:`.integration`,
:mod:`.perturbation`, :mod:`.genes`, :mod:`.trajectory`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_path, read_json_object
from .classification import METRICS as _ANNOTATION
from .foscttm import METRICS as _MULTIOMICS
from .genes import METRICS as _GENES
from .integration import METRICS as _INTEGRATION
from .perturbation import METRICS as _PERTURBATION
from .trajectory import METRICS as _TRAJECTORY
from .rows import CORE_COLUMNS, DIRECTIONS, NOTE, metrics_frame, read_metrics, write_csv

__all__ = ["CORE_COLUMNS", "NOTE", "higher_is_better", "metrics_frame", "write_csv", "read_metrics",
           "summarize", "write_table", "render_markdown", "parameter_flags"]

_SUMMARY_STATS = ("mean", "std", "n_seeds")


def _compose(*declarations: Mapping[str, str]) -> dict[str, str]:
    """One metric -> direction table from the modules' ``METRICS``; a name two modules declare
    must have one direction."""
    out: dict[str, str] = {}
    for declared in declarations:
        for name, direction in declared.items():
            if direction not in DIRECTIONS:
                raise ValueError(f"metric {name!r}: direction must be one of {DIRECTIONS}, got {direction!r}")
            if out.setdefault(name, direction) != direction:
                raise ValueError(f"metric {name!r} is declared {out[name]!r} and {direction!r}")
    return out


#: every declared metric -> "higher" / "lower" / "unranked"; ``name*`` covers the names starting with ``name``
METRIC_DIRECTIONS = _compose(_ANNOTATION, _MULTIOMICS, _INTEGRATION, _PERTURBATION, _GENES, _TRAJECTORY)
#: metrics (and families) where lower is better, as the table legend names them
LOWER_IS_BETTER = tuple(name.rstrip("*") for name, d in METRIC_DIRECTIONS.items() if d == "lower")
#: descriptive counts, never bolded as "best"
NOT_RANKED = tuple(name for name, d in METRIC_DIRECTIONS.items() if d == "unranked")
_FAMILIES = sorted((name[:-1] for name in METRIC_DIRECTIONS if name.endswith("*")), key=len, reverse=True)


def higher_is_better(metric: str) -> bool | None:
    """True / False for the metric's direction; None for descriptive values (no best). A metric
    no module declares counts as higher is better."""
    direction = METRIC_DIRECTIONS.get(metric)
    if direction is None:
        family = next((f for f in _FAMILIES if metric.startswith(f)), None)
        direction = METRIC_DIRECTIONS[family + "*"] if family is not None else "higher"
    return None if direction == "unranked" else direction == "higher"


#: each table's metric order: its task's declaration (a name's first matching entry; ``name*``
#: entries place the family's names together, by name)
TASK_METRICS = {"annotation": _ANNOTATION, "integration": _INTEGRATION, "perturbation": _PERTURBATION,
                "reverse_perturbation": _PERTURBATION, "multiomics": _MULTIOMICS, "gene_pairs": _GENES,
                "rank_reconstruction": _GENES, "trajectory": _TRAJECTORY}


def _order_in(declared: Mapping[str, str], metric: str) -> int:
    """Position of ``metric`` in a module's ``METRICS`` (exact name, else its ``name*`` family);
    past the end when the module does not declare it."""
    for i, name in enumerate(declared):
        if metric == name or (name.endswith("*") and metric.startswith(name[:-1])):
            return i
    return len(declared)


def _flag_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in CORE_COLUMNS and c != NOTE]


def summarize(frames: Iterable[pd.DataFrame] | pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and number of seeds of every (run identity, metric).

    Parameters
    ----------
    frames
        Long per-run frames (see module doc), or one concatenated frame.

    Returns
    -------
    pandas.DataFrame
        One row per task x dataset x method x flags x metric with ``mean``, ``std``
        (ddof=1, NaN with fewer than 2 finite values), ``n_seeds`` (finite values only) and
        ``note`` (distinct notes joined by `` | ``). Sorted by task, dataset, method, flags
        and the metric's table order.
    """
    frame = frames if isinstance(frames, pd.DataFrame) else pd.concat(list(frames), ignore_index=True)
    if frame.empty:
        raise InputError("no metric rows to summarise")
    missing = [c for c in CORE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"metric frame lacks columns {missing}; expected {list(CORE_COLUMNS)}")
    frame = frame.copy()
    if NOTE not in frame:
        frame[NOTE] = ""
    frame[NOTE] = frame[NOTE].fillna("").astype(str)
    flags = _flag_columns(frame)
    for col in flags:    # flags identify rows; a missing flag is '' so it groups (and prints) cleanly
        if frame[col].isna().any():
            frame[col] = frame[col].astype(object).where(frame[col].notna(), "")
    keys = ["task", "dataset", "method", *flags, "metric"]
    dup = frame.duplicated(keys + ["seed"], keep=False)
    if dup.any():
        first = frame.loc[dup, keys + ["seed"]].iloc[0].to_dict()
        raise InputError(f"metric rows repeat for the same run and seed, e.g. {first}")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")

    def agg(group: pd.DataFrame) -> pd.Series:
        vals = group["value"].to_numpy(np.float64)
        ok = vals[np.isfinite(vals)]
        notes = [n for n in dict.fromkeys(group[NOTE]) if n]
        return pd.Series({"mean": ok.mean() if len(ok) else np.nan,
                          "std": ok.std(ddof=1) if len(ok) > 1 else np.nan,
                          "n_seeds": len(ok), NOTE: " | ".join(notes)})

    out = frame.groupby(keys, sort=False, dropna=False)[["value", NOTE]].apply(agg).reset_index()
    out["n_seeds"] = out["n_seeds"].astype(int)
    out["_order"] = [_order_in(TASK_METRICS.get(task, METRIC_DIRECTIONS), metric)
                     for task, metric in zip(out["task"], out["metric"])]
    out = out.sort_values(["task", "dataset", "method", *flags, "_order", "metric"], kind="stable")
    return out.drop(columns="_order").reset_index(drop=True)


def _fmt(mean: float, std: float, metric: str) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if metric.startswith("n_") and float(mean).is_integer() and not (np.isfinite(std) and std > 0):
        return f"{int(mean)}"
    return f"{mean:.3f}" if not np.isfinite(std) else f"{mean:.3f} ± {std:.3f}"


def _fmt_flag(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return f"{int(value):,}"
    return str(value)


def _is_true(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def render_markdown(summary: pd.DataFrame, *, title: str) -> str:
    """Markdown of a :func:`summarize` frame: one table per task / dataset.

    Rows are methods (with their flags: ``variant``, parameter counts ...), columns are
    metrics, cells ``mean ± std`` with 3 decimals (the mean alone with one seed), rows on
    simulated data marked ``(simulated)``, the best mean of each column in bold (lower is
    better for FOSCTTM and MSE; counts are not ranked), and the notes under the table.
    """
    flags = [c for c in summary.columns if c not in ("task", "dataset", "method", "metric", NOTE, *_SUMMARY_STATS)]
    lines = [f"# {title}", "",
             "Mean ± standard deviation over seeds (ddof=1; one seed shows the mean alone); "
             "best value per column in **bold** (lower is better for "
             + ", ".join(LOWER_IS_BETTER) + "; higher for the others).", ""]
    many_tasks = summary["task"].nunique() > 1
    for (task, dataset), block in summary.groupby(["task", "dataset"], sort=False):
        metrics = list(dict.fromkeys(block["metric"]))
        # flags blank throughout this block (e.g. another task's row keys) are not shown
        shown_flags = [c for c in flags if c != "simulated" and (block[c].astype(str).str.strip() != "").any()]
        row_keys = ["method", *flags]
        rows = list(dict.fromkeys(map(tuple, block[row_keys].astype(object).to_numpy().tolist())))
        table = {r: {} for r in rows}
        for rec in block.itertuples(index=False):
            r = tuple(getattr(rec, k) for k in row_keys)
            table[r][rec.metric] = (rec.mean, rec.std, rec.n_seeds)
        best = {}
        for m in metrics:
            direction = higher_is_better(m)
            vals = [round(v[0], 3) for r in rows if (v := table[r].get(m)) and np.isfinite(v[0])]
            if direction is not None and len(vals) > 1:
                best[m] = max(vals) if direction else min(vals)
        lines += [f"## {task} / {dataset}" if many_tasks else f"## {dataset}", ""]
        header = ["method", *shown_flags, "seeds", *metrics]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            rec = dict(zip(row_keys, r))
            name = str(rec["method"]) + (" (simulated)" if "simulated" in rec and _is_true(rec["simulated"]) else "")
            seeds = max((v[2] for v in table[r].values()), default=0)
            cells = [name, *(_fmt_flag(rec[f]) for f in shown_flags), str(seeds)]
            for m in metrics:
                v = table[r].get(m)
                if v is None:
                    cells.append("")
                    continue
                text = _fmt(v[0], v[1], m)
                if m in best and np.isfinite(v[0]) and round(v[0], 3) == best[m]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        notes = {}
        for rec in block.itertuples(index=False):
            for note in filter(None, str(getattr(rec, NOTE)).split(" | ")):
                notes.setdefault(f"{rec.metric}: {note}", []).append(str(rec.method))
        if notes:
            lines += ["", "Notes:"]
            lines += [f"- {text} ({', '.join(dict.fromkeys(methods))})" for text, methods in notes.items()]
        lines.append("")
    return "\n".join(lines)


def write_table(summary: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike, *,
                title: str) -> None:
    """Write a :func:`summarize` frame as tidy CSV and as Markdown (:func:`render_markdown`).

    Both files are written atomically.
    """
    missing = [c for c in ("task", "dataset", "method", "metric", *_SUMMARY_STATS) if c not in summary.columns]
    if missing:
        raise InputError(f"summary lacks columns {missing}; pass the output of summarize()")
    text = render_markdown(summary, title=title)
    write_csv(summary, csv_path)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)


def parameter_flags(train_dir) -> dict:
    """Table flag columns of a model run from its ``train_dir/run.json``: ``n_params`` (the whole
    pretrained model, or both towers) and ``n_params_backbone`` (fine-tuning: the pretrained
    backbone alone, what the same-size rule matches). {} for ``train_dir`` None (a baseline)."""
    if train_dir is None:
        return {}
    info = read_json_object(Path(train_dir) / "run.json", what="the run.json of a training run")["config"]
    if "pretrained_params" in info:
        flags = {"n_params": int(info["pretrained_params"])}
        if "pretrained_params_backbone" in info:
            flags["n_params_backbone"] = int(info["pretrained_params_backbone"])
        return flags
    if isinstance(info.get("n_params"), dict):  # two towers
        return {"n_params": int(sum(info["n_params"].values()))}
    raise InputError(f"{Path(train_dir) / 'run.json'}: no parameter counts (expected pretrained_params or n_params)")

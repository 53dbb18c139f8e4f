"""The one style of every cellmamba figure: fonts, a fixed colour per method, method order,
titles and saving (PNG 150 dpi + PDF beside it, atomically).

Colours: baselines grey, Mamba models blues / green, Transformer peers oranges / pink
(Okabe-Ito colours, safe for colour-blind readers). The figure modules (:mod:`.bars`,
:mod:`.embedding`, :mod:`.perturbation`, :mod:`.confusion`, :mod:`.loss`, :mod:`.gpu`)
draw with these helpers only.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..io import atomic_path

__all__ = ["SCRATCH", "is_scratch", "style", "method_color", "method_order", "save_figure", "method_kind", "title_color", "finish_figure",
           "is_true", "method_of_path", "files_by_method"]


# Okabe-Ito: blue, sky blue, bluish green for Mamba; vermillion, orange, reddish purple for Transformers
_MAMBA = {"scmamba2": "#0072B2", "genemamba": "#56B4E9", "genemamba_u": "#009E73", "scmamba": "#0072B2",
          "scmamba_bimamba": "#009E73",
          "mamba2": "#0072B2", "bimamba_mamba2": "#009E73", "bimamba_mamba1": "#56B4E9"}
_TRANSFORMER = {"scmamba2_transformer": "#D55E00", "genemamba_transformer": "#E69F00",
                "scmamba_transformer": "#D55E00", "transformer": "#D55E00"}
_BASELINE = {"logreg": "#4D4D4D", "knn_pca": "#999999", "pca": "#4D4D4D", "harmony": "#7F7F7F",
             "scvi": "#B3B3B3", "no_change": "#4D4D4D", "train_mean": "#7F7F7F", "additive": "#B3B3B3",
             "pca_cca": "#7F7F7F"}
_GREYS = ("#4D4D4D", "#7F7F7F", "#B3B3B3", "#999999", "#666666")
_FONT = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "figure.titlesize": 12, "axes.spines.top": False,
         "axes.spines.right": False, "savefig.bbox": "tight", "pdf.fonttype": 42, "figure.dpi": 100}
#: resolution of the PNGs
_DPI = 150


#: suffix of a fine-tuned model's no-pretraining control (same architecture, random init)
SCRATCH = "_scratch"


def is_scratch(method: str) -> bool:
    return method.endswith(SCRATCH)


def method_kind(method: str) -> str:
    """``baseline``, ``mamba`` or ``transformer`` (unknown names: by their spelling, else baseline);
    a ``<model>_scratch`` control is its model's kind."""
    method = method.removesuffix(SCRATCH)
    if method in _BASELINE:
        return "baseline"
    if method in _TRANSFORMER or method.endswith("transformer"):
        return "transformer"
    if method in _MAMBA or "mamba" in method:
        return "mamba"
    return "baseline"


def method_color(method: str) -> str:
    """The colour of ``method`` in every figure (hex): grey for baselines, blue / green for Mamba
    models, orange / pink for Transformers; unknown names get a stable shade of their family; a
    ``<model>_scratch`` control its model's colour halfway to white."""
    if is_scratch(method):
        rgb = np.array([int(method_color(method.removesuffix(SCRATCH))[i:i + 2], 16) for i in (1, 3, 5)])
        return "#" + "".join(f"{v:02X}" for v in (rgb + 256) // 2)  # the mean with white, halves rounded up
    for table in (_BASELINE, _MAMBA, _TRANSFORMER):
        if method in table:
            return table[method]
    kind = method_kind(method)
    pool = {"baseline": _GREYS, "mamba": ("#0072B2", "#56B4E9", "#009E73"),
            "transformer": ("#D55E00", "#E69F00", "#CC79A7")}[kind]
    # a stable hash (Python's str hash is salted per process)
    return pool[sum(map(ord, method)) % len(pool)]


def method_order(methods: Iterable[str]) -> list[str]:
    """Baselines first, then each Mamba model followed by its Transformer peer (input order kept);
    a ``<model>_scratch`` control right after its model."""
    methods = list(dict.fromkeys(methods))
    scratch = [m for m in methods if is_scratch(m)]
    named = list(dict.fromkeys([m for m in methods if not is_scratch(m)] + [m.removesuffix(SCRATCH) for m in scratch]))
    base = [m for m in named if method_kind(m) == "baseline"]
    mamba = [m for m in named if method_kind(m) == "mamba"]
    trans = [m for m in named if method_kind(m) == "transformer"]
    out = list(base)
    for m in mamba:
        out.append(m)
        peer = f"{m}_transformer"
        if peer in trans:
            out.append(peer)
            trans.remove(peer)
    out += trans
    given = set(methods)
    return [n for m in out for n in (m, m + SCRATCH) if n in given]


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings of every cellmamba figure (Agg backend, readable fonts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(_FONT):
        yield


def save_figure(fig, out: str | os.PathLike, *, formats: Sequence[str] = ("png", "pdf")) -> tuple[Path, ...]:
    """Write ``fig`` as ``out`` with suffix .png (150 dpi) and .pdf (``formats``), atomically; close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = tuple(out.with_suffix(f".{f}") for f in formats)
    try:
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=_DPI, format=path.suffix[1:])
    finally:
        plt.close(fig)
    return paths


def finish_figure(fig, title: str, *, bottom: float = 0.0, right: float = 0.0) -> None:
    """Suptitle plus a tight layout that keeps ``bottom`` / ``right`` inches free (for a
    figure-level legend or colour bar) and room for the title, so nothing overlaps it."""
    w, h = fig.get_size_inches()
    fig.suptitle(title, y=1 - 0.12 / h, va="top")
    fig.tight_layout(rect=(0, bottom / h, 1 - right / w, 1 - 0.4 / h))


def title_color(method: str) -> str:
    """Method colour for titles, but dark for the (light grey) baselines so they stay readable."""
    return "black" if method_kind(method) == "baseline" else method_color(method)


def is_true(value) -> bool:
    """A flag read from a CSV or uns: 'true' / '1' / 'yes' (any case) or a truthy non-NaN value."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not (isinstance(value, float) and np.isnan(value))


def method_of_path(path: str | os.PathLike) -> str:
    """``results/<task>/.../<method>/seed<s>/<file>`` -> method."""
    return Path(path).parent.parent.name


def files_by_method(files) -> dict[str, Path]:
    """A mapping method -> file, or a list of run files (method taken from the path; the first file
    of each method is kept, i.e. its first seed)."""
    if isinstance(files, Mapping):
        out = {str(k): Path(v) for k, v in files.items()}
    else:
        out = {}
        for f in files:
            out.setdefault(method_of_path(f), Path(f))
    if not out:
        raise InputError("no input files given")
    return {m: out[m] for m in method_order(out)}

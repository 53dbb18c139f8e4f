"""The training run's metric outputs: ``metrics.csv`` / ``eval_metrics.csv`` (:class:`MetricsCSV`,
continued across a resume), tensorboard scalars and the loss-curve plot."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..io import atomic_path

__all__ = ["MetricsCSV", "tensorboard_writer", "plot_loss_curve", "peak_flops", "model_flops_utilisation"]

#: dense bf16 / fp16 tensor-core peaks (FLOP/s, datasheets), by a substring of the CUDA device name;
#: the first match wins (PCIe before the SXM default of the same chip)
PEAK_FLOPS_16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12),
                 ("GH200", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12),
                 ("A10G", 70e12), ("A10", 125e12), ("L4", 121e12), ("A6000", 155e12))


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's dense tensor-core peak for ``precision`` ("bf16" / "fp16"), or None (another
    precision, or a device not in :data:`PEAK_FLOPS_16`)."""
    if precision not in ("bf16", "fp16"):
        return None
    return next((peak for key, peak in PEAK_FLOPS_16 if key in device_name), None)


def model_flops_utilisation(n_params: int, tokens_per_s: float, peak: float, world_size: int = 1) -> float:
    """6 x parameters x tokens/s (forward + backward of the matrix products) over each GPU's peak,
    ``tokens_per_s`` being all ranks' together. A lower bound for both model kinds: a Mamba scan's
    and an attention's own FLOPs are not counted."""
    return 6.0 * n_params * tokens_per_s / (peak * max(world_size, 1))

log = logging.getLogger(__name__)


class MetricsCSV:
    """A CSV whose columns grow when new metric keys appear.

    A resumed run continues the file: the rows up to ``keep_until`` (the checkpoint's step) are
    kept, one per step, and those after it (left by steps lost in a crash, which the resumed run
    repeats) are dropped. The file is only ever replaced atomically, and not before this run has
    a row to add: a run that fails before its first row leaves the file as it was (no empty
    file), and a fresh start (``keep_until`` None) replaces an older file with its first row."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path = path
        self.rows: list[dict] = []
        self.columns: list[str] = []
        self._replace = True  # the file on disk is not yet this run's: the first write replaces it
        if keep_until is not None and path.is_file() and path.stat().st_size > 0:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or [])
                rows = list(reader)
            # complete rows only (a line cut by a crash has missing fields), one per step
            by_step = {int(r["step"]): r for r in rows if None not in r and None not in r.values()
                       and (r.get("step") or "").isdigit() and int(r["step"]) <= keep_until}
            self.rows = [by_step[k] for k in sorted(by_step)]
            if len(self.rows) != len(rows):
                log.info("%s: kept the %d rows up to step %d, dropped %d (steps this run repeats)",
                         path, len(self.rows), keep_until, len(rows) - len(self.rows))
            self._rewrite()  # atomically; the header stays even when no row is kept
            self._replace = False

    def _rewrite(self) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, lineterminator="\n")
            if self.columns:
                writer.writeheader()
            writer.writerows(self.rows)

    def write(self, row: dict) -> None:
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new or self._replace:
            self.columns += new
            self._rewrite()
            self._replace = False
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, lineterminator="\n").writerow(row)


def tensorboard_writer(log_dir: Path):
    """A tensorboard SummaryWriter on ``log_dir``; None (logged) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: metrics go to metrics.csv only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def plot_loss_curve(metrics_csv: str | os.PathLike, png: str | os.PathLike) -> Path | None:
    """Plot loss against step from ``metrics.csv`` into ``png``, drawn by the one loss-curve
    plotter (:func:`cellmamba.plots.loss_curve`); None (logged) without matplotlib."""
    from ..plots import loss_curve  # plotting loads only when a run finishes

    return loss_curve(metrics_csv, png, name="train loss")

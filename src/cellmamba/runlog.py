"""Logging and provenance for workflow jobs: every job logs to its Snakemake log file, and every
result records the package versions and git revision that made it."""
from __future__ import annotations

import datetime as _dt
import logging
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["setup_logging", "provenance", "progress"]

#: seconds between two progress lines when stderr is not a terminal (a Slurm output file, a rule
#: log): a bar there is a line of its own every so often, not a stream of carriage returns
LOG_PROGRESS_INTERVAL = 30.0

_PACKAGES = ("cellmamba", "numpy", "scipy", "pandas", "anndata", "scanpy", "numba", "torch",
             "tiledbsoma", "cellxgene-census", "mamba-ssm", "snakemake")


def setup_logging(log_path: str | Path | None = None, *, level: int = logging.INFO) -> logging.Logger:
    """Send the root logger (and warnings) to ``log_path`` and to stderr, one format for all jobs;
    an uncaught exception is logged with its traceback (so a failed job's rule log holds the
    error, not only the Slurm output) before Python's own report of it."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if not getattr(sys.excepthook, "_cellmamba", False):
        sys.excepthook = _log_uncaught(sys.excepthook)
    return logging.getLogger("cellmamba")


def _log_uncaught(previous):
    """An excepthook writing the traceback to the root logger's log files at the time of the
    error (stderr gets Python's own report, so it is not repeated there)."""
    def hook(kind, value, tb):
        if not issubclass(kind, KeyboardInterrupt):
            record = logging.LogRecord("cellmamba", logging.CRITICAL, "", 0, "the job failed: %s: %s",
                                       (kind.__name__, value), (kind, value, tb))
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
                    handler.flush()
        previous(kind, value, tb)
    hook._cellmamba = True
    return hook


class _LogLines:
    """A file for tqdm that logs each rendered bar as one INFO line (carriage returns dropped)."""

    def __init__(self, logger: logging.Logger):
        self.logger, self.last = logger, None

    def write(self, text: str) -> int:
        for line in text.replace("\r", "\n").split("\n"):
            line = line.strip()
            if line and line != self.last:
                self.logger.info(line)
                self.last = line
        return len(text)

    def flush(self) -> None:
        pass


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` for jobs: on a terminal the live bar; elsewhere (a Slurm
    output file, a rule log) the bar goes to the ``cellmamba.progress`` logger as a line at most
    every :data:`LOG_PROGRESS_INTERVAL` seconds (and at the end), so the rule log shows it readably."""
    from tqdm.auto import tqdm

    if kwargs.get("disable") or sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval") or 0.0), LOG_PROGRESS_INTERVAL)
    kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 10.0))
    return tqdm(iterable, file=_LogLines(logging.getLogger("cellmamba.progress")), ascii=True, ncols=100, **kwargs)


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config: dict | None = None) -> dict:
    """What made a result: time, host, Python, package versions, git revision, resolved config."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "packages": versions,
        "git_revision": _git_revision(),
        "config": config,
    }

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

__all__ = ["setup_logging", "provenance"]

_PACKAGES = ("cellmamba", "numpy", "scipy", "pandas", "anndata", "scanpy", "numba", "torch",
             "tiledbsoma", "cellxgene-census", "mamba-ssm", "snakemake")


def setup_logging(log_path: str | Path | None = None, *, level: int = logging.INFO) -> logging.Logger:
    """Send the root logger (and warnings) to ``log_path`` and to stderr, one format for all jobs."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logging.getLogger("cellmamba")


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

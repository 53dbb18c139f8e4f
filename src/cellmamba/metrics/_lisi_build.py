"""Rebuild scib's graph-LISI helper (``knn_graph``) from the C++ source scib ships.

scib 1.1.x computes iLISI / cLISI by writing the kNN graph to a Matrix Market file and calling
a compiled helper, ``<scib>/knn_graph/knn_graph.o``, which finds each cell's k nearest cells
by shortest paths. The wheel ships that binary prebuilt against GLIBC 2.38 / GLIBCXX 3.4.32,
so it fails on Debian 12 and other older systems (and scib does not check its exit status:
the failure surfaces later as a missing-file error). The source, ``knn_graph.cpp``, ships
beside it; scib's makefile builds it with ``g++ -O3 -std=c++11``.

:func:`lisi_binary` returns a helper that runs here, building it when needed:

1. scib's own ``knn_graph.o`` when it runs;
2. otherwise the source is compiled (same flags as scib's makefile) and, when scib's folder is
   writable, installed over scib's copy (so ``scib.metrics.ilisi_graph`` itself works too);
3. when it is not writable, into a user cache folder
   (``$CELLMAMBA_CACHE`` or ``$XDG_CACHE_HOME/cellmamba`` or ``~/.cache/cellmamba``), keyed by
   the scib version and the source's checksum. scib always calls the binary beside its own
   module, so :mod:`cellmamba.metrics.integration` calls the helper itself with the path
   returned here (the LISI arithmetic is still scib's).

Idempotent: a helper that already runs is never rebuilt (``--force`` rebuilds). Run as
``python -m cellmamba.metrics._lisi_build``; ``scripts/setup_env.sh`` does.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import CellmambaError

__all__ = ["LisiBuildError", "scib_binary_path", "cache_binary_path", "binary_works",
           "build_lisi_binary", "lisi_binary"]

log = logging.getLogger(__name__)

#: compiler flags of scib's knn_graph/makefile
CXX_FLAGS = ("-O3", "-std=c++11")

# a 4-cell path graph 1-2-3-4 (symmetric, as scib writes connectivities) for the smoke test
_SMOKE_MTX = """%%MatrixMarket matrix coordinate real general
4 4 6
1 2 1.0
2 1 1.0
2 3 0.5
3 2 0.5
3 4 1.0
4 3 1.0
"""

_resolved: Path | None = None


class LisiBuildError(CellmambaError, RuntimeError):
    """scib's LISI helper neither runs nor can be rebuilt (no compiler, build failure)."""


def _scib_dir() -> Path:
    try:
        import scib
    except ImportError as exc:
        raise LisiBuildError("scib is not installed; install cellmamba[eval] (pip install 'scib>=1.1.5')") from exc
    return Path(scib.__file__).resolve().parent


def scib_binary_path() -> Path:
    """The path scib's ``lisi_graph_py`` executes: ``<scib>/knn_graph/knn_graph.o``."""
    return _scib_dir() / "knn_graph" / "knn_graph.o"


def _source_path() -> Path:
    src = _scib_dir() / "knn_graph" / "knn_graph.cpp"
    if not src.is_file():
        raise LisiBuildError(f"{src}: scib's LISI source is missing; cannot rebuild the helper")
    return src


def cache_binary_path() -> Path:
    """Where the helper is built when scib's folder is read-only (scib version + source checksum)."""
    from importlib.metadata import version

    root = os.environ.get("CELLMAMBA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "cellmamba")
    digest = hashlib.sha256(_source_path().read_bytes()).hexdigest()[:12]
    return Path(root) / "scib-knn_graph" / f"scib{version('scib')}-{digest}" / "knn_graph.o"


def binary_works(path: str | os.PathLike) -> bool:
    """True when ``path`` runs on a 4-cell path graph and writes the expected neighbour lists."""
    path = Path(path)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with tempfile.TemporaryDirectory(prefix="cellmamba_lisi_check_") as tmp:
        mtx = Path(tmp) / "graph.mtx"
        mtx.write_text(_SMOKE_MTX)
        prefix = Path(tmp) / "out"
        try:
            proc = subprocess.run([str(path), str(mtx), str(prefix), "2", "1", "100"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("LISI helper %s does not run: %s", path, exc)
            return False
        if proc.returncode != 0:
            log.debug("LISI helper %s failed (%d): %s", path, proc.returncode, proc.stderr.strip())
            return False
        indices = Path(f"{prefix}_indices_0.txt")
        if not indices.is_file():
            return False
        rows = [line.split(",") for line in indices.read_text().splitlines() if line.strip()]
    # every cell listed once, each with its 2 nearest cells by shortest path
    return sorted(int(r[0]) for r in rows) == [1, 2, 3, 4] and all(len(r) == 3 for r in rows)


def _compile(target: Path) -> None:
    cxx = os.environ.get("CXX", "g++")
    compiler = shutil.which(cxx)
    if compiler is None:
        raise LisiBuildError(
            f"scib's LISI helper {scib_binary_path()} does not run on this system and no C++ compiler "
            f"({cxx!r}; set CXX to choose another) was found to rebuild it from {_source_path()}. "
            "Install g++ (Debian: apt-get install g++) and run `python -m cellmamba.metrics._lisi_build`.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    cmd = [compiler, *CXX_FLAGS, str(_source_path()), "-o", str(tmp)]
    log.info("building scib's LISI helper: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise LisiBuildError(f"compiling {_source_path()} failed ({' '.join(cmd)}):\n{proc.stderr.strip()}")
        if not binary_works(tmp):
            raise LisiBuildError(f"the rebuilt LISI helper {tmp} does not run correctly")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_lisi_binary(*, force: bool = False) -> Path:
    """Make sure a working LISI helper exists; return its path.

    Parameters
    ----------
    force
        Rebuild even when a working helper already exists.

    Returns
    -------
    Path
        scib's own ``knn_graph.o`` when it runs (or was rebuilt in place), otherwise the user
        cache copy (:func:`cache_binary_path`).

    Raises
    ------
    LisiBuildError
        scib missing, no compiler, or the build fails.
    """
    scib_bin = scib_binary_path()
    if not force and binary_works(scib_bin):
        return scib_bin
    if os.access(scib_bin.parent, os.W_OK):
        _compile(scib_bin)
        return scib_bin
    cached = cache_binary_path()
    if not force and binary_works(cached):
        return cached
    log.info("%s is not writable; building the LISI helper into %s", scib_bin.parent, cached)
    _compile(cached)
    return cached


def lisi_binary() -> Path:
    """A working LISI helper, built on first use and remembered for the process."""
    global _resolved
    if _resolved is None or not _resolved.is_file():
        scib_bin = scib_binary_path()
        if binary_works(scib_bin):
            _resolved = scib_bin
        else:
            cached = cache_binary_path()
            _resolved = cached if binary_works(cached) else build_lisi_binary()
    return _resolved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellmamba.metrics._lisi_build", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if a working helper exists")
    parser.add_argument("--check", action="store_true", help="only report whether a working helper exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.check:
            for path in (scib_binary_path(), cache_binary_path()):
                if binary_works(path):
                    print(path)
                    return 0
            print("no working LISI helper; run without --check to build it", file=sys.stderr)
            return 1
        print(build_lisi_binary(force=args.force))
    except LisiBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One registry entry -> ``results/datasets/{dataset}.h5ad`` in the standard schema, with provenance."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping

from ..errors import InputError
from ..io import atomic_path, sha256_file
from ..keys import UNS, UNS_PROVENANCE, UNS_SIMULATED, UNS_SOURCE_FILES, UNS_X_KIND
from .download import verify_file
from .readers import read_dataset

__all__ = ["prepare_dataset", "UNS_SOURCE_FILES", "UNS_PROVENANCE"]

log = logging.getLogger(__name__)



def prepare_dataset(entry: Mapping, files: Mapping[str, os.PathLike], out: str | os.PathLike, *, dataset: str,
                    lock_file: str | os.PathLike | None = None):
    """Read a dataset with its registry entry and write it atomically to ``out``.

    Each registry file is verified first: against the entry's ``sha256`` when known, else against
    the lock file's recorded value (recorded there, with a warning, if absent) when
    ``lock_file`` is given; a file placed by hand thus passes the same checks as a download.
    A user dataset's file (spec ``{"path": ...}``) is only hashed for provenance.

    Parameters
    ----------
    entry
        A config/datasets.yaml entry (``task``, ``reader``, ``files``, ``keys``, ``x_kind``,
        ``options``, ``simulated``, ...), or the user-dataset entry the workflow builds.
    files
        Logical file name -> local path, the entry's files (empty for the demo readers).
    out
        The h5ad to write.
    dataset
        The dataset's name (lock-file keys ``<dataset>/<file key>``, provenance).
    lock_file
        The checksum lock file (None: only known sha256 are checked).

    Returns
    -------
    The AnnData written; ``uns["cellmamba"]`` holds ``x_kind``, ``reader``, ``task``,
    ``simulated``, ``dataset``, ``source_files`` ({key: {name, sha256}}) and ``provenance``
    (JSON: time, host, package versions, git revision, the entry).
    """
    from ..runlog import provenance

    specs = dict(entry.get("files") or {})
    files = {str(k): Path(v) for k, v in dict(files).items()}
    if set(files) != set(specs):
        raise InputError(f"dataset {dataset!r}: input files {sorted(files)} do not match the registry entry's files "
                         f"{sorted(specs)}")
    sources = {}
    for key, path in files.items():
        spec = specs[key] or {}
        registry_file = "path" not in spec  # a user dataset's own file ({"path": ...}) is not locked
        if spec.get("sha256") or (lock_file is not None and registry_file):
            digest = verify_file(path, sha256=spec.get("sha256"), lock_file=lock_file,
                                 key=f"{dataset}/{key}", url=spec.get("url"))
        else:
            digest = sha256_file(path)
        sources[key] = {"name": path.name, "sha256": digest}
    adata = read_dataset(entry["reader"], files, task=entry["task"], keys=entry.get("keys"),
                         x_kind=entry.get("x_kind"), options=entry.get("options"), dataset=dataset)
    simulated = bool(entry.get("simulated", False))
    if bool(adata.uns[UNS].get(UNS_SIMULATED, False)) != simulated:
        raise InputError(f"dataset {dataset!r}: the registry says simulated={simulated} but reader "
                         f"{entry['reader']!r} produced simulated={adata.uns[UNS].get(UNS_SIMULATED)}")
    adata.uns[UNS].update({"dataset": dataset, UNS_SOURCE_FILES: sources,
                           UNS_PROVENANCE: json.dumps(provenance(dict(entry)), default=str)})
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    log.info("%s: %d cells x %d genes (%s, x_kind %s) written to %s", dataset, adata.n_obs, adata.n_vars,
             entry["task"], adata.uns[UNS][UNS_X_KIND], out)
    return adata

"""File helpers shared by every stage: atomic writes, checksums, checked h5ad reading."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import CorruptFileError, InputError
from .keys import UNS

__all__ = ["atomic_path", "sha256_file", "read_h5ad_checked", "ensure_parent", "write_h5ad_atomic",
           "write_profiles", "read_profiles", "read_json_object", "read_h5ad_plain", "write_paired_embedding",
           "read_paired_embedding", "paired_key", "LEGACY_PAIRED_PREFIX"]


def ensure_parent(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    Works for files and directories. On any exception the temporary is removed, so nothing
    half-written is ever left at ``path``; an existing ``path`` is replaced only on success.
    """
    final = ensure_parent(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic write of {final}: nothing was written to {tmp}")
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def read_json_object(path: str | os.PathLike, *, what: str, missing: type[Exception] = InputError,
                     invalid: type[Exception] = CorruptFileError) -> dict:
    """The JSON object stored at ``path``.

    Raises ``missing`` when there is no such file and ``invalid`` when the content is not JSON or
    not an object; both messages name the file and ``what`` was expected there.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: no such file (expected {what})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"{path}: not valid JSON ({exc}); expected {what}") from exc
    if not isinstance(data, dict):
        raise invalid(f"{path}: top level is {type(data).__name__}; expected a JSON object ({what})")
    return data


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def read_h5ad_checked(path: str | os.PathLike, *, backed: str | None = None):
    """Read an h5ad file, turning low-level failures into errors that name the file."""
    import anndata as ad
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (expected an .h5ad file)")
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in ("X", "obs", "var") if k not in fh]
    except OSError as exc:
        raise CorruptFileError(f"{path}: not a readable HDF5/h5ad file ({exc})") from exc
    if missing:
        raise CorruptFileError(f"{path}: malformed h5ad, missing group(s) {missing} (expected X, obs, var)")
    try:
        return ad.read_h5ad(path, backed=backed)
    except Exception as exc:  # anndata raises many types for damaged files
        raise CorruptFileError(f"{path}: could not be read as h5ad ({type(exc).__name__}: {exc})") from exc


def _plain(info) -> dict:
    """A JSON round trip: uns gets plain dicts / lists / strings / numbers only."""
    import json

    return json.loads(json.dumps(info, default=str))


def write_h5ad_atomic(adata, path: str | os.PathLike) -> None:
    """``adata.write_h5ad`` to a temporary sibling, renamed on success; a failed write (e.g. a
    full disk) leaves nothing behind and raises :class:`CorruptFileError` naming ``path``."""
    with atomic_path(path) as tmp:
        h5 = tmp.with_name(tmp.name + ".h5ad")  # anndata wants the suffix; unique like tmp
        try:
            adata.write_h5ad(h5)
            h5.rename(tmp)
        except OSError as exc:
            raise CorruptFileError(f"{path}: could not be written ({type(exc).__name__}: {exc}); "
                                   "nothing was left there (is the disk full?)") from exc
        finally:
            h5.unlink(missing_ok=True)


def read_h5ad_plain(path: str | os.PathLike, what: str):
    """Read any h5ad (X may be absent: embeddings, profiles); errors name the file and ``what``."""
    import anndata as ad

    if not Path(path).exists():
        raise InputError(f"{path}: no such file (expected {what})")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # anndata raises many types for damaged files
        raise CorruptFileError(f"{path}: could not be read as h5ad ({type(exc).__name__}: {exc})") from exc


def write_profiles(frame, path: str | os.PathLike, *, obs=None, info: dict | None = None) -> None:
    """Mean expression profiles (e.g. predicted perturbation responses) as h5ad.

    Parameters
    ----------
    frame
        DataFrame (n_profiles, n_genes): index = profile names (conditions), columns = genes.
    path
        Output .h5ad: X float32 dense (n_profiles, n_genes), obs_names = ``frame.index``,
        var_names = ``frame.columns``, obs = ``obs`` (same index), uns['cellmamba'] = ``info``.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd

    if not frame.index.is_unique or not frame.columns.is_unique:
        raise InputError(f"{path}: profile names and genes must be unique")
    obs = pd.DataFrame(index=frame.index.astype(str)) if obs is None else obs.copy()
    if list(obs.index.astype(str)) != list(frame.index.astype(str)):
        raise InputError(f"{path}: obs must have the profiles' index")
    obs.index = obs.index.astype(str)
    out = ad.AnnData(X=np.asarray(frame.to_numpy(), dtype=np.float32), obs=obs,
                     var=pd.DataFrame(index=frame.columns.astype(str)))
    out.uns[UNS] = _plain(info or {})
    write_h5ad_atomic(out, path)


def read_profiles(path: str | os.PathLike):
    """Inverse of :func:`write_profiles`: (DataFrame profiles x genes, obs DataFrame, info dict)."""
    import numpy as np
    import pandas as pd

    a = read_h5ad_plain(path, "a profiles h5ad (X = one mean profile per row)")
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return (pd.DataFrame(X.astype(np.float64), index=a.obs_names.copy(), columns=a.var_names.copy()),
            a.obs.copy(), dict(a.uns.get(UNS, {})))


#: obsm key prefix of the paired embeddings written before the scverse-style keys (still read)
LEGACY_PAIRED_PREFIX = "emb_"


def paired_key(method: str, modality: str) -> str:
    """The obsm key of one modality's embedding by ``method``: ``X_<method>_<modality>``."""
    return f"X_{method}_{modality}"


def write_paired_embedding(obs, embeddings, path: str | os.PathLike, *, info: dict | None = None) -> None:
    """Two modalities' embeddings of the same cells as h5ad (no X).

    Parameters
    ----------
    obs
        DataFrame of the cells (obs_names and columns are kept, e.g. ``cell_type``).
    embeddings
        Mapping modality -> (n_cells, n_dims) array, exactly two, in order (first = RNA).
    path
        Output .h5ad: obsm['X_<method>_<modality>'] float32 (:func:`paired_key`),
        uns['cellmamba'] = ``info`` plus ``modalities`` (the order).
    info
        Must name the ``method`` (the obsm keys carry it).
    """
    import anndata as ad
    import numpy as np

    mods = list(embeddings)
    if len(mods) != 2:
        raise InputError(f"{path}: a paired embedding has two modalities, got {mods}")
    method = (info or {}).get("method")
    if not method:
        raise InputError(f"{path}: a paired embedding needs info['method'] (its obsm keys are X_<method>_<modality>)")
    obsm = {paired_key(method, m): np.asarray(embeddings[m], dtype=np.float32) for m in mods}
    for key, emb in obsm.items():
        if emb.ndim != 2 or emb.shape[0] != len(obs):
            raise InputError(f"{path}: obsm['{key}'] has shape {emb.shape}; expected ({len(obs)}, n_dims)")
    out = ad.AnnData(obs=obs.copy(), obsm=obsm)
    out.uns[UNS] = _plain({**(info or {}), "modalities": mods})
    write_h5ad_atomic(out, path)


def read_paired_embedding(path: str | os.PathLike):
    """Inverse of :func:`write_paired_embedding`: (obs, [modality 1, modality 2], x, y)."""
    import numpy as np

    a = read_h5ad_plain(path, "a paired-embedding h5ad (obsm['X_<method>_<modality>'] x 2)")
    uns = a.uns.get(UNS, {})
    mods = [str(m) for m in uns.get("modalities", [])]
    keys = [paired_key(str(uns.get("method")), m) for m in mods]
    if any(k not in a.obsm for k in keys):  # a file written before the scverse-style keys
        keys = [f"{LEGACY_PAIRED_PREFIX}{m}" for m in mods]
    if len(mods) != 2 or any(k not in a.obsm for k in keys):
        raise InputError(f"{path}: expected uns['cellmamba']['modalities'] naming two modalities and "
                         f"uns['cellmamba']['method'], with obsm['X_<method>_<modality>']; found modalities {mods}, "
                         f"method {uns.get('method')!r}, obsm {list(a.obsm)}")
    return a.obs.copy(), mods, np.asarray(a.obsm[keys[0]]), np.asarray(a.obsm[keys[1]])

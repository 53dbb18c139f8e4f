"""Downloads with the checksum policy of DESIGN.md, and extraction of archive members.

Policy:

- a file whose registry entry gives a sha256 must match it: a mismatch raises
  :class:`~cellmamba.errors.CorruptFileError` and the file is removed from its path (a
  download is deleted; a file placed there by hand is renamed to ``<name>.rejected`` so a
  manually obtained copy is not destroyed);
- a file without a known sha256 has the sha256 of its first download (or of the first file
  found at its path) recorded in a lock file (JSON, ``{"files": {key: {...}}}``, keyed
  ``<dataset>/<file key>``) and a warning is logged; every later download, and every file
  placed at the path beforehand, is verified against the recorded value;
- downloads go to a temporary sibling and are renamed into place only once verified, so a
  crash never leaves a half-written file at the final path;
- a file without a URL (Google Drive folders, unknown figshare ids) must be placed by hand:
  when it is absent, :class:`~cellmamba.errors.InputError` carries the registry's ``manual``
  text (where to get it, where to put it).

Archives (zip, tar, tar.gz; nested zips such as the scGPT figshare bundle) and gzip-compressed
files are cached under ``archive_dir`` (verified the same way, keyed ``archive:<url>``) and the
wanted member is extracted to its final path by :func:`extract_member` / :func:`gunzip_file`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO, Iterator, Mapping

from ..errors import CorruptFileError, InputError
from ..io import atomic_path, ensure_parent, sha256_file

__all__ = ["fetch", "verify_file", "download_file", "extract_member", "gunzip_file", "read_lock",
           "MEMBER_SEPARATOR"]

log = logging.getLogger(__name__)

#: separates the levels of a nested archive in a registry ``member``: "outer.zip::inner/file.h5ad"
MEMBER_SEPARATOR = "::"
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- lock file
@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.flock`` (parallel jobs share the lock file / archives)."""
    lock = ensure_parent(path.with_name(path.name + ".flock"))
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_lock(lock_file: str | os.PathLike) -> dict[str, dict]:
    """The recorded checksums: ``{key: {"sha256", "size", "url", "recorded"}}`` ({} when absent)."""
    lock_file = Path(lock_file)
    if not lock_file.exists():
        return {}
    try:
        data = json.loads(lock_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{lock_file}: not a readable checksum lock file ({exc}); expected JSON "
                               '{"files": {"<dataset>/<file>": {"sha256": ...}}}') from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise CorruptFileError(f"{lock_file}: expected a JSON object with a 'files' mapping")
    return data["files"]


def _record(lock_file: Path, key: str, *, sha256: str, size: int, url: str | None) -> None:
    with _flock(lock_file):
        files = read_lock(lock_file)
        files[key] = {"sha256": sha256, "size": size, "url": url,
                      "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        payload = {"comment": "sha256 of dataset files the registry (config/datasets.yaml) has no checksum for, "
                              "recorded on first download by cellmamba; later downloads are verified against it. "
                              "Delete an entry to accept a new upstream version.",
                   "files": dict(sorted(files.items()))}
        with atomic_path(lock_file) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n")


def _expected(key: str, sha256: str | None, lock_file: Path | None) -> tuple[str | None, str]:
    """The sha256 a file must have and where that value comes from ("registry" / "lock file")."""
    if lock_file is None:
        return (sha256.lower() if sha256 else None), "registry"
    if sha256 is not None:
        recorded = read_lock(lock_file).get(key, {}).get("sha256")
        if recorded is not None and recorded != sha256:
            log.warning("%s: the lock file %s records sha256 %s but the registry gives %s; the registry wins",
                        key, lock_file, recorded, sha256)
        return sha256.lower(), "registry"
    recorded = read_lock(lock_file).get(key, {}).get("sha256")
    return recorded, f"lock file {lock_file}"


def _accept_new(path: Path, key: str, digest: str, lock_file: Path, url: str | None) -> None:
    _record(lock_file, key, sha256=digest, size=path.stat().st_size, url=url)
    log.warning("%s: no sha256 known for %s; recorded sha256 %s of %s in %s (later copies are verified "
                "against it; add it to config/datasets.yaml to pin it)", key, url or "this file", digest, path,
                lock_file)


def verify_file(path: str | os.PathLike, *, sha256: str | None, lock_file: str | os.PathLike | None, key: str,
                url: str | None = None) -> str:
    """Verify a file already at ``path`` (placed by hand or downloaded earlier); return its sha256.

    Known ``sha256`` (registry) or the lock file's recorded value must match; with neither, the
    file's sha256 is recorded under ``key`` with a warning. A mismatching file is renamed to
    ``<name>.rejected`` and :class:`CorruptFileError` names both checksums. ``lock_file`` may be
    None only when ``sha256`` is known.
    """
    path = Path(path)
    lock_file = None if lock_file is None else Path(lock_file)
    if lock_file is None and sha256 is None:
        raise InputError(f"{path}: neither a known sha256 nor a lock file to verify {key} against")
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected the dataset file {key})")
    digest = sha256_file(path)
    expected, origin = _expected(key, sha256, lock_file)
    if expected is None:
        _accept_new(path, key, digest, lock_file, url)
    elif digest != expected:
        rejected = path.with_name(path.name + ".rejected")
        os.replace(path, rejected)
        raise CorruptFileError(f"{path}: sha256 {digest} does not match {expected} ({origin}, key {key}); "
                               f"the file was moved to {rejected}. Replace it with the published file "
                               f"(or, if upstream changed it on purpose, update the {origin})")
    else:
        log.info("%s: sha256 verified (%s)", path, origin)
    return digest


# --------------------------------------------------------------------------- download
def _download(url: str, tmp: Path, *, dest: Path) -> str:
    """Stream ``url`` into ``tmp`` with a progress bar; return the sha256 of what was written."""
    from ..runlog import progress as _bar

    request = urllib.request.Request(url, headers={"User-Agent": "cellmamba (dataset download)"})
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=120) as response, open(tmp, "wb") as out:
            total = response.headers.get("Content-Length")
            with _bar(total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name,
                      mininterval=2.0) as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise ConnectionError(f"{url}: download failed ({exc}); nothing was written to {dest}") from exc
    return h.hexdigest()


def _present(dest: Path, *, url, sha256, lock_file: Path, key: str, manual) -> bool:
    """True when ``dest`` is already there (then verified, never replaced); an InputError when it
    is absent and has no URL to be fetched from; False when it must be downloaded."""
    if dest.exists():
        log.info("%s: already present, verifying instead of downloading", dest)
        verify_file(dest, sha256=sha256, lock_file=lock_file, key=key, url=url)
        return True
    if url is None:
        raise InputError(f"{dest}: file {key} has no download URL in the registry and is not present. "
                         f"{manual or 'Place it at this path by hand.'}")
    return False


def fetch(url: str | None, dest: str | os.PathLike, *, sha256: str | None = None,
          lock_file: str | os.PathLike, key: str | None = None, manual: str | None = None) -> Path:
    """Download ``url`` to ``dest`` under the checksum policy; return ``dest``.

    Parameters
    ----------
    url
        Source URL (``http(s)://``, ``file://``); None for a file that must be placed by hand.
    dest
        Final path (``<data_dir>/<dataset>/<name>``). A file already there is not downloaded
        but verified (:func:`verify_file`).
    sha256
        Known checksum (lower-case hex) or None: then the lock file's recorded value is used,
        or the first download is recorded there with a warning.
    lock_file
        JSON lock file of recorded checksums (created on first use).
    key
        Lock-file key; default ``"<parent dir name>/<file name>"`` (i.e. ``dataset/name``).
    manual
        Where to obtain the file by hand; part of the error when ``url`` is None and ``dest``
        is absent.

    Raises
    ------
    CorruptFileError
        The download (or the file at ``dest``) does not match the known / recorded sha256; the
        download is deleted, a pre-placed file renamed to ``<name>.rejected``.
    InputError
        No URL and no file at ``dest``.
    ConnectionError
        The download failed (nothing is left at ``dest``).
    """
    dest, lock_file = Path(dest), Path(lock_file)
    key = key or f"{dest.parent.name}/{dest.name}"
    if _present(dest, url=url, sha256=sha256, lock_file=lock_file, key=key, manual=manual):
        return dest
    expected, origin = _expected(key, sha256, lock_file)
    log.info("%s: downloading %s", dest, url)
    with atomic_path(dest) as tmp:
        digest = _download(url, tmp, dest=dest)
        if expected is not None and digest != expected:
            raise CorruptFileError(f"{url}: downloaded sha256 {digest} does not match {expected} ({origin}, "
                                   f"key {key}); the download was deleted and nothing was written to {dest}")
    if expected is None:
        _accept_new(dest, key, digest, lock_file, url)
    else:
        log.info("%s: sha256 verified (%s)", dest, origin)
    return dest


# --------------------------------------------------------------------------- archives
def _open_archive(path: Path, *, source: str):
    if zipfile.is_zipfile(path):
        return zipfile.ZipFile(path)
    if tarfile.is_tarfile(path):
        return tarfile.open(path, "r:*")
    raise CorruptFileError(f"{source}: not a zip or tar archive (expected one holding the registry's member)")


def _names(archive) -> list[str]:
    if isinstance(archive, zipfile.ZipFile):
        return [n for n in archive.namelist() if not n.endswith("/")]
    return [m.name for m in archive.getmembers() if m.isfile()]


@contextlib.contextmanager
def _open_member(archive, name: str, *, source: Path) -> Iterator[IO[bytes]]:
    names = _names(archive)
    if name not in names:
        base = Path(name).name
        near = [n for n in names if Path(n).name == base] or names[:10]
        raise InputError(f"{source}: archive has no member {name!r}; members with that name or first members: "
                         f"{near} (fix 'member' in config/datasets.yaml)")
    if isinstance(archive, zipfile.ZipFile):
        with archive.open(name) as fh:
            yield fh
    else:
        fh = archive.extractfile(name)
        if fh is None:
            raise InputError(f"{source}: member {name!r} is not a regular file")
        with fh:
            yield fh


def extract_member(archive: str | os.PathLike, member: str, dest: str | os.PathLike) -> Path:
    """Extract one ``member`` of a zip / tar(.gz) ``archive`` to ``dest`` (atomically).

    ``member`` is the path inside the archive; levels of nested archives are separated by
    ``"::"``, e.g. ``"scGPT_processed_datasets/Fig2_Annotation/mye-...zip::mye/query_adata.h5ad"``
    (each inner archive is first copied to a temporary file next to ``dest``).
    """
    archive, dest = Path(archive), Path(dest)
    levels = member.split(MEMBER_SEPARATOR)
    if any(not level for level in levels):
        raise InputError(f"member {member!r}: empty path level (expected 'a.zip{MEMBER_SEPARATOR}inner/file')")
    ensure_parent(dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".extract-") as workdir:
        current, source = archive, str(archive)
        for depth, name in enumerate(levels):
            last = depth == len(levels) - 1
            inner = Path(workdir) / f"level{depth}"
            with _open_archive(current, source=source) as arc, _open_member(arc, name, source=Path(source)) as fh:
                with (atomic_path(dest) if last else contextlib.nullcontext(inner)) as target:
                    with open(target, "wb") as out:
                        shutil.copyfileobj(fh, out, _CHUNK)
            current, source = inner, f"{source}{MEMBER_SEPARATOR}{name}"
    log.info("%s: extracted %s from %s", dest, member, archive)
    return dest


def gunzip_file(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Decompress the gzip file ``src`` to ``dest`` (atomically), e.g. GEO's ``*.h5ad.gz``."""
    src, dest = Path(src), Path(dest)
    try:
        with gzip.open(src, "rb") as fh, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(fh, out, _CHUNK)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise CorruptFileError(f"{src}: not a complete gzip file ({exc})") from exc
    return dest


def _archive_path(url: str, archive_dir: Path) -> Path:
    base = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    return archive_dir / f"{hashlib.sha1(url.encode()).hexdigest()[:10]}_{base}"


def download_file(spec: Mapping, dest: str | os.PathLike, *, lock_file: str | os.PathLike, key: str,
                  archive_dir: str | os.PathLike) -> Path:
    """Obtain one registry file (``files.<key>`` of a config/datasets.yaml entry) at ``dest``.

    Parameters
    ----------
    spec
        ``{url, name, sha256, member?, archive_sha256?, gunzip?, manual?}``. Without ``member``
        and ``gunzip`` the URL is the file itself (:func:`fetch`). With ``member`` the URL is an
        archive: it is fetched to ``archive_dir`` (verified against ``archive_sha256`` / the lock
        key ``archive:<url>``) and the member extracted; with ``gunzip: true`` the URL is a
        gzip file that is decompressed. ``sha256`` is always that of the final file.
    dest
        ``<data_dir>/<dataset>/<name>``; a file already there is verified, not replaced.
    lock_file, key
        Lock file and key (``<dataset>/<file key>``) of the final file's checksum.
    archive_dir
        Cache of downloaded archives, shared between datasets (the scGPT bundle serves two).
    """
    dest, lock_file, archive_dir = Path(dest), Path(lock_file), Path(archive_dir)
    url, sha256, manual = spec.get("url"), spec.get("sha256"), spec.get("manual")
    member, gunzip = spec.get("member"), bool(spec.get("gunzip", False))
    if member and gunzip:
        raise InputError(f"registry file {key}: 'member' and 'gunzip' are exclusive")
    if not member and not gunzip:
        return fetch(url, dest, sha256=sha256, lock_file=lock_file, key=key, manual=manual)
    if _present(dest, url=url, sha256=sha256, lock_file=lock_file, key=key, manual=manual):
        return dest
    archive = _archive_path(url, archive_dir)
    with _flock(archive):  # a second job wanting another member of the same archive waits, then verifies
        fetch(url, archive, sha256=spec.get("archive_sha256"), lock_file=lock_file, key=f"archive:{url}")
    expected, origin = _expected(key, sha256, lock_file)
    if member:
        extract_member(archive, member, dest)
    else:
        gunzip_file(archive, dest)
    digest = sha256_file(dest)
    if expected is None:
        _accept_new(dest, key, digest, lock_file, url)
    elif digest != expected:
        dest.unlink()
        raise CorruptFileError(f"{dest}: extracted file has sha256 {digest}, expected {expected} ({origin}, key "
                               f"{key}); it was deleted (the archive {archive} matched its own checksum)")
    return dest

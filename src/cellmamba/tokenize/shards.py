"""Token shards on disk: writer, checksummed manifests, memory-mapped random-access readers.

Layout (docs/architecture.md, "Token shards"): one directory per shard holding

- ``offsets.npy`` int64 (n_cells + 1,): row pointer into the flat arrays;
- ``tokens.npy`` uint32 (n_tokens,): vocabulary ids (patch: positions in genomic order);
- ``values.npy`` (n_tokens,): binned -> uint8 bins, patch -> float32; absent for rank;
- ``dataset.npy`` int32 (n_cells,): index into the manifest's ``datasets``;
- ``measured.npy`` bool (n_datasets, n_genes): genes each dataset measured;
- ``features.npy`` int64 (n_features,) (patch only, an addition to the contract): the
  vocabulary gene index at each genomic position, so a position token can be read back;
- ``manifest.json``: format version, tokenizer + settings, counters, n_cells, n_tokens,
  vocab_hash, n_genes, datasets, source, per-file {sha256, bytes, block_bytes, block_sha256,
  dtype, shape}, cellmamba version.

A corpus manifest (``write_corpus_manifest``) lists shards in order with their cell counts
and the sha256 of each shard manifest. ``TokenCorpus`` gives O(1) access to any cell by its
global index (a binary search over the few shard boundaries, then two offset reads and two
memory-map slices); no shard is ever loaded whole.

Verification (``verify=`` of :class:`TokenShard` / :class:`TokenCorpus`, :func:`verify_shard`):

- ``"full"`` (or True): every file's size and whole-file sha256. Reads all the data once: at
  0.5-1.0 GB/s per core for sha256 (benchmarks/README.md, "sha256 throughput") a paper-size
  corpus (~0.19 TB over 512 shards) takes 3-6 core-minutes, more where the disk is slower: too
  slow for every (re)start of a run, with the GPUs idle.
- ``"sample"``: every file's size, plus the sha256 of its first and last ``block_bytes`` block
  and of :data:`SAMPLED_BLOCKS` blocks drawn at random, against the per-block digests of the
  manifest (``block_sha256``); small files (up to ``2 + SAMPLED_BLOCKS`` blocks) are checked
  whole. About 4 MiB per large file, 1-3% of the bytes: 11-13 s for the paper corpus (measured
  cold). Truncated or extended files and damaged headers are always caught; changed bytes
  elsewhere only when a sampled block holds them, so training pairs it with the full check once
  per run in the background (:meth:`TokenCorpus.verify_in_background`; ``cellmamba.train.run_pretraining``).
  A manifest written before the block digests (no ``bytes`` / ``block_sha256``) falls back to
  the full sha256 of that shard (logged once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .._version import __version__
from ..errors import CellmambaError, CorruptFileError, InputError
from ..io import atomic_path, sha256_file

__all__ = [
    "FORMAT_VERSION", "TokenizedCell", "ShardWriter", "TokenShard", "TokenCorpus",
    "write_corpus_manifest", "verify_shard", "ShardVerifier", "VERIFY_MODES", "BLOCK_BYTES", "SAMPLED_BLOCKS",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_HEADER_BYTES = 128  # fixed .npy header size of streamed arrays (a multiple of 64, as numpy aligns)
#: size of the blocks whose digests the manifest records (``block_sha256``), in bytes
BLOCK_BYTES = 1 << 20
#: blocks drawn at random per file by ``verify="sample"``, besides its first and last block
SAMPLED_BLOCKS = 2
#: hex digits kept of each block's sha256 (64 bits: enough against accidental corruption; the
#: whole-file sha256 stays the full 256 bits)
_BLOCK_HEX = 16
#: what ``verify=`` takes: False / "none" (shapes only), True / "full", "sample"
VERIFY_MODES = ("none", "sample", "full")
_NOTED_OLD: set[Path] = set()  # corpus directories whose old manifests were noted in the log


class TokenizedCell(NamedTuple):
    """One cell read from a shard. ``tokens``: uint32 (length,); ``values``: (length,) uint8
    bins / float32 values, or None (rank); ``dataset``: index into the shard's datasets."""

    tokens: np.ndarray
    values: np.ndarray | None
    dataset: int


class _NpyStream:
    """Append-only 1-D .npy file: a placeholder header, the data, the real header on close.

    Why hand-written: numpy writes .npy only from a whole in-memory array; streaming chunks
    keeps memory bounded by the chunk size whatever the shard size.
    """

    def __init__(self, path: Path, dtype):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._fh = open(path, "wb")
        self._fh.write(b"\0" * _HEADER_BYTES)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._fh.write(memoryview(arr).cast("B"))
        self.n += arr.shape[0]

    def close(self) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n,)}
        text = repr(header).encode("latin1")
        pad = _HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:  # pragma: no cover - 1-D shapes never get near 118 characters
            raise RuntimeError(f"{self.path}: .npy header does not fit in {_HEADER_BYTES} bytes")
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + np.uint16(_HEADER_BYTES - 10).tobytes()
                       + text + b" " * pad + b"\n")
        self._fh.close()


def _file_entry(path: Path, dtype, shape, *, block_bytes: int = BLOCK_BYTES) -> dict:
    """The manifest's record of one file: whole-file sha256, size, per-block digests (one read)."""
    whole, blocks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            whole.update(block)
            blocks.append(hashlib.sha256(block).hexdigest()[:_BLOCK_HEX])
            size += len(block)
    return {"sha256": whole.hexdigest(), "bytes": size, "block_bytes": block_bytes, "block_sha256": blocks,
            "dtype": np.dtype(dtype).str, "shape": list(shape)}


class ShardWriter:
    """Write one token shard into ``directory`` (normally the temporary of ``atomic_path``).

    Call :meth:`append` once per chunk of cells, then :meth:`finish` once.

    Parameters
    ----------
    directory
        Created if absent; must be empty.
    values_dtype
        dtype of ``values.npy`` (``np.uint8`` binned, ``np.float32`` patch) or None (rank:
        no values file).
    block_bytes
        Size of the blocks whose sha256 the manifest records per file (``verify="sample"``).
    """

    def __init__(self, directory: str | os.PathLike, *, values_dtype=None, block_bytes: int = BLOCK_BYTES):
        if not isinstance(block_bytes, int) or block_bytes < 1:
            raise InputError(f"ShardWriter: block_bytes must be an integer >= 1, got {block_bytes!r}")
        self.block_bytes = block_bytes
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tokens = _NpyStream(self.dir / "tokens.npy", np.uint32)
        self._values = _NpyStream(self.dir / "values.npy", values_dtype) if values_dtype is not None else None
        self._offsets = _NpyStream(self.dir / "offsets.npy", np.int64)
        self._offsets.write(np.zeros(1, dtype=np.int64))
        self._end = 0

    def append(self, lengths: np.ndarray, tokens: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add cells. ``lengths``: (n,) tokens per cell; ``tokens`` / ``values``: (sum(lengths),)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        n_tok = int(lengths.sum())
        if tokens.shape[0] != n_tok or (values is not None and values.shape[0] != n_tok):
            raise ValueError(f"append: {n_tok} tokens by lengths, got {tokens.shape[0]} tokens")
        if (values is None) != (self._values is None):
            raise ValueError("append: values given for a shard without values, or missing")
        self._offsets.write(self._end + np.cumsum(lengths))
        self._end += n_tok
        self._tokens.write(tokens)
        if self._values is not None:
            self._values.write(values)

    def finish(self, *, dataset: np.ndarray, measured: np.ndarray, manifest: dict,
               extra_arrays: dict[str, np.ndarray] | None = None) -> dict:
        """Close the streams, write the fixed-size arrays and ``manifest.json``.

        Parameters
        ----------
        dataset
            int32 (n_cells,), index into ``manifest["datasets"]``.
        measured
            bool (n_datasets, n_genes).
        manifest
            Fields to record (tokenizer, settings, stats, vocab_hash, n_genes, datasets, source).
        extra_arrays
            Further small arrays to store and checksum (e.g. patch ``features``).

        Returns
        -------
        The manifest written.
        """
        streams = [self._offsets, self._tokens] + ([self._values] if self._values is not None else [])
        for s in streams:
            s.close()
        n_cells = self._offsets.n - 1
        dataset = np.asarray(dataset, dtype=np.int32)
        if dataset.shape != (n_cells,):
            raise ValueError(f"finish: dataset has shape {dataset.shape}, expected ({n_cells},)")
        arrays = {"dataset": dataset, "measured": np.asarray(measured, dtype=bool), **(extra_arrays or {})}
        files = {s.path.name: _file_entry(s.path, s.dtype, (s.n,), block_bytes=self.block_bytes) for s in streams}
        for name, arr in arrays.items():
            path = self.dir / f"{name}.npy"
            np.save(path, arr)
            files[path.name] = _file_entry(path, arr.dtype, arr.shape, block_bytes=self.block_bytes)
        full = {"format_version": FORMAT_VERSION, **manifest, "n_cells": n_cells, "n_tokens": self._end,
                "files": files, "cellmamba_version": __version__}
        with open(self.dir / MANIFEST, "w") as fh:
            json.dump(full, fh, indent=1)
        return full


def _read_manifest(path: Path) -> dict:
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file (expected a token shard manifest)") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {manifest.get('format_version')!r}, this cellmamba reads "
                         f"{FORMAT_VERSION}")
    return manifest


def _verify_mode(verify) -> str:
    if verify is True:
        return "full"
    if verify is False or verify is None:
        return "none"
    if verify not in VERIFY_MODES:
        raise InputError(f"verify must be one of {VERIFY_MODES} (or True / False), got {verify!r}")
    return verify


def _has_blocks(entry: dict) -> bool:
    return isinstance(entry.get("bytes"), int) and isinstance(entry.get("block_sha256"), list) and \
        isinstance(entry.get("block_bytes"), int) and entry["block_bytes"] > 0


def _sampled_blocks(n_blocks: int, rng: random.Random) -> list[int]:
    """The blocks ``verify="sample"`` reads: all of a small file, else the first, the last and
    :data:`SAMPLED_BLOCKS` others at random."""
    if n_blocks <= 2 + SAMPLED_BLOCKS:
        return list(range(n_blocks))
    return sorted({0, n_blocks - 1, *rng.sample(range(1, n_blocks - 1), min(SAMPLED_BLOCKS, n_blocks - 2))})


def _check_file(f: Path, entry: dict, manifest_path: Path, mode: str, rng: random.Random) -> str | None:
    """What is wrong with one shard file (None: nothing found), by ``mode`` ("sample" / "full")."""
    if not f.is_file():
        return f"{f}: missing (listed in {manifest_path})"
    size = f.stat().st_size
    expected = entry.get("bytes")
    if isinstance(expected, int) and size != expected:
        return (f"{f}: {size} bytes, {manifest_path} records {expected} "
                f"({'truncated' if size < expected else 'longer than written'})")
    if mode == "sample" and _has_blocks(entry):
        block, digests = entry["block_bytes"], entry["block_sha256"]
        if len(digests) != -(-expected // block):
            return f"{f}: {manifest_path} records {len(digests)} block digests for {expected} bytes (damaged manifest)"
        with open(f, "rb") as fh:
            for k in _sampled_blocks(len(digests), rng):
                fh.seek(k * block)
                digest = hashlib.sha256(fh.read(block)).hexdigest()[:_BLOCK_HEX]
                if digest != digests[k]:
                    return (f"{f}: block {k} (bytes {k * block}-{min((k + 1) * block, size) - 1}) has sha256 "
                            f"{digest}..., {manifest_path} records {digests[k]}... (changed bytes)")
        return None
    digest = sha256_file(f)
    if digest != entry.get("sha256"):
        return f"{f}: sha256 {digest}, {manifest_path} records {entry.get('sha256')} (changed bytes)"
    return None


def verify_shard(path: str | os.PathLike, *, mode: str = "full", rng: random.Random | None = None) -> dict:
    """Check every file of a shard against its manifest.

    Parameters
    ----------
    path
        The shard directory.
    mode
        "full": size and whole-file sha256 of every file; "sample": size and the sampled blocks'
        digests (module docstring; a manifest without block digests gets "full").
    rng
        Draws the sampled blocks (default: seeded from the OS, other blocks on every open).

    Returns
    -------
    The shard manifest.

    Raises
    ------
    CorruptFileError
        Naming every file that is missing, truncated or altered, with the expected and found
        size or digest.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    manifest = _read_manifest(manifest_path)
    if mode not in ("sample", "full"):
        raise InputError(f"verify_shard: mode must be 'sample' or 'full', got {mode!r}")
    entries = manifest["files"]
    if mode == "sample" and not all(_has_blocks(e) for e in entries.values()) and path.parent not in _NOTED_OLD:
        _NOTED_OLD.add(path.parent)  # once per corpus directory
        log.info("%s: written before block digests (no bytes / block_sha256): checking the whole-file sha256 of "
                 "shards instead of sampled blocks (%.1f MB here; noted once per corpus)", manifest_path,
                 sum((path / n).stat().st_size for n in entries if (path / n).is_file()) / 1e6)
    rng = rng if rng is not None else random.Random(os.urandom(16))
    problems = [p for name, entry in entries.items()
                if (p := _check_file(path / name, entry, manifest_path, mode, rng)) is not None]
    if problems:
        raise CorruptFileError("; ".join(problems))
    return manifest


class TokenShard:
    """Read one token shard through memory maps (nothing is loaded but the offsets' pages
    touched, the per-cell dataset index and the small measured mask).

    Parameters
    ----------
    path
        The shard directory.
    verify
        False / "none": shapes and dtypes only; True / "full": every checksum first (reads every
        file once); "sample": sizes and sampled blocks (module docstring). :meth:`verify` does
        the full check later.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool | str = False):
        self.path = Path(path)
        mode = _verify_mode(verify)
        self.manifest = (verify_shard(self.path, mode=mode) if mode != "none"
                         else _read_manifest(self.path / MANIFEST))
        files = self.manifest["files"]
        self.offsets = self._map("offsets.npy")
        self.tokens = self._map("tokens.npy")
        self.values = self._map("values.npy") if "values.npy" in files else None
        self.dataset = self._map("dataset.npy")
        self.measured = np.asarray(self._map("measured.npy"))
        self.features = self._map("features.npy") if "features.npy" in files else None
        self.n_cells = int(self.manifest["n_cells"])
        if self.offsets.shape[0] != self.n_cells + 1 or int(self.offsets[-1]) != self.tokens.shape[0]:
            raise CorruptFileError(f"{self.path / 'offsets.npy'}: does not match n_cells / tokens.npy "
                                   f"(n_cells {self.n_cells}, tokens {self.tokens.shape[0]})")

    def _map(self, name: str) -> np.ndarray:
        f = self.path / name
        entry = self.manifest["files"].get(name)
        try:
            arr = np.load(f, mmap_mode="r")
        except FileNotFoundError as exc:
            raise CorruptFileError(f"{f}: missing (listed in {self.path / MANIFEST})") from exc
        except (ValueError, OSError) as exc:  # truncated or damaged header / data
            raise CorruptFileError(f"{f}: not a readable .npy file ({exc})") from exc
        if entry is not None and (list(arr.shape) != entry["shape"] or arr.dtype.str != entry["dtype"]):
            raise CorruptFileError(f"{f}: shape {arr.shape} / dtype {arr.dtype.str} differ from the manifest's "
                                   f"{tuple(entry['shape'])} / {entry['dtype']}")
        return arr

    def __len__(self) -> int:
        return self.n_cells

    @property
    def tokenizer(self) -> str:
        return self.manifest["tokenizer"]

    @property
    def datasets(self) -> list[str]:
        return list(self.manifest["datasets"])

    def __getitem__(self, i: int) -> TokenizedCell:
        """Cell ``i`` (0 <= i < n_cells; negative counts from the end): views into the maps."""
        n = self.n_cells
        if not -n <= i < n:
            raise IndexError(f"{self.path}: cell {i} out of range (n_cells {n})")
        i = int(i) % n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        values = self.values[a:b] if self.values is not None else None
        return TokenizedCell(self.tokens[a:b], values, int(self.dataset[i]))

    def measured_genes(self, i: int) -> np.ndarray:
        """bool (n_genes,): the genes measured by cell ``i``'s dataset (zeros there are real)."""
        return self.measured[int(self.dataset[i])]

    def verify(self) -> None:
        """Raise :class:`CorruptFileError` naming the file if any checksum fails (full check)."""
        verify_shard(self.path, mode="full")


_CONSISTENT_KEYS = ("tokenizer", "settings", "vocab_hash", "n_genes")


def write_corpus_manifest(shard_dirs, out_path: str | os.PathLike, *, provenance: dict | None = None) -> Path:
    """Write the corpus manifest listing ``shard_dirs`` in order (atomically).

    Records, per shard, its path relative to the manifest's directory, its cell count and
    the sha256 of its ``manifest.json``; plus the tokenizer, settings and vocab_hash shared
    by all shards; and ``provenance`` (what made the corpus: resolved config, package versions,
    git revision; see :func:`cellmamba.runlog.provenance`) when given.

    Raises
    ------
    InputError
        No shard, or shards disagreeing on tokenizer, settings, vocab_hash or n_genes.
    """
    out_path = Path(out_path)
    shard_dirs = [Path(p) for p in shard_dirs]
    if not shard_dirs:
        raise InputError(f"{out_path}: a corpus needs at least one shard")
    entries, first = [], None
    for d in shard_dirs:
        manifest = _read_manifest(d / MANIFEST)
        if first is None:
            first = (d, manifest)
        for key in _CONSISTENT_KEYS:
            if manifest.get(key) != first[1].get(key):
                raise InputError(f"{d}: {key} {manifest.get(key)!r} differs from {first[0]}'s "
                                 f"{first[1].get(key)!r}; shards of one corpus must agree")
        entries.append({"path": os.path.relpath(d.resolve(), out_path.parent.resolve()),
                        "n_cells": manifest["n_cells"], "manifest_sha256": sha256_file(d / MANIFEST)})
    corpus = {"format_version": FORMAT_VERSION, "n_cells": sum(e["n_cells"] for e in entries),
              **{k: first[1][k] for k in _CONSISTENT_KEYS}, "shards": entries,
              "cellmamba_version": __version__}
    if provenance is not None:
        corpus["provenance"] = provenance
    with atomic_path(out_path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(corpus, fh, indent=1)
    return out_path


@dataclass
class _Located:
    shard: int
    local: int


class TokenCorpus:
    """All shards of a corpus manifest, indexed by global cell number.

    Parameters
    ----------
    path
        The corpus ``manifest.json`` (or the directory holding it).
    verify
        Checks of every shard on open: False / "none" (shapes only), True / "full" (reads all
        data once), "sample" (sizes + sampled blocks; module docstring).

    Raises
    ------
    CorruptFileError
        A shard manifest whose sha256 differs from the corpus manifest's record, or (with
        ``verify``) any shard file failing its checksum.
    InputError
        Shards disagreeing on vocab_hash / tokenizer / settings.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool | str = False):
        path = Path(path)
        _verify_mode(verify)
        self.path = path / MANIFEST if path.is_dir() else path
        self.manifest = _read_manifest(self.path)
        self.shards: list[TokenShard] = []
        for entry in self.manifest["shards"]:
            d = (self.path.parent / entry["path"]).resolve()
            digest = sha256_file(d / MANIFEST) if (d / MANIFEST).exists() else None
            if digest != entry["manifest_sha256"]:
                raise CorruptFileError(f"{d / MANIFEST}: missing or its sha256 differs from the record in {self.path}")
            shard = TokenShard(d, verify=verify)
            for key in _CONSISTENT_KEYS:
                if shard.manifest.get(key) != self.manifest.get(key):
                    raise InputError(f"{d}: {key} {shard.manifest.get(key)!r} differs from the corpus's "
                                     f"{self.manifest.get(key)!r} ({self.path})")
            if shard.n_cells != entry["n_cells"]:
                raise CorruptFileError(f"{d}: {shard.n_cells} cells, the corpus manifest records {entry['n_cells']}")
            self.shards.append(shard)
        self.starts = np.concatenate([[0], np.cumsum([s.n_cells for s in self.shards])]).astype(np.int64)
        self.n_cells = int(self.starts[-1])

    def __len__(self) -> int:
        return self.n_cells

    def locate(self, i: int) -> _Located:
        """Shard number and index within it of global cell ``i``."""
        if not 0 <= i < self.n_cells:
            raise IndexError(f"{self.path}: cell {i} out of range (n_cells {self.n_cells})")
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return _Located(s, int(i - self.starts[s]))

    def __getitem__(self, i: int) -> TokenizedCell:
        loc = self.locate(int(i))
        return self.shards[loc.shard][loc.local]

    def measured_genes(self, i: int) -> np.ndarray:
        """bool (n_genes,): genes measured by global cell ``i``'s dataset."""
        loc = self.locate(int(i))
        return self.shards[loc.shard].measured_genes(loc.local)

    def verify(self) -> None:
        """Verify every shard's checksums; raises :class:`CorruptFileError` naming the file."""
        for shard in self.shards:
            shard.verify()

    def verify_in_background(self, *, rank: int = 0, world_size: int = 1) -> "ShardVerifier":
        """Start the full check of this rank's share of the shards (shard i where
        ``i % world_size == rank``) in a daemon thread; see :class:`ShardVerifier`."""
        return ShardVerifier([s.path for i, s in enumerate(self.shards) if i % world_size == rank]).start()


class ShardVerifier:
    """The full check (:func:`verify_shard`, ``mode="full"``) of some shards in a daemon thread.

    sha256 releases the GIL, so the thread costs about one core while training goes on; it stops
    at the first damaged shard. :meth:`check` raises what it found (never blocks unless
    ``wait``). Training calls ``check()`` after every step and ``check(wait=True)`` before it
    exports the model, so a run over a damaged shard fails instead of finishing.
    """

    def __init__(self, shard_dirs):
        self.shard_dirs = [Path(d) for d in shard_dirs]
        self.error: CellmambaError | None = None
        self.n_verified = 0
        self._thread = threading.Thread(target=self._run, name="cellmamba-shard-verify", daemon=True)

    def start(self) -> "ShardVerifier":
        self._thread.start()
        return self

    def _run(self) -> None:
        t0, n_bytes = time.perf_counter(), 0
        for d in self.shard_dirs:
            try:
                manifest = verify_shard(d, mode="full")
            except CellmambaError as exc:
                self.error = exc
                log.error("token shard %s failed its full check: %s", d, exc)
                return
            except OSError as exc:  # the file changed or vanished while being read
                self.error = CorruptFileError(f"{d}: could not be read for its full check ({exc})")
                log.error("%s", self.error)
                return
            n_bytes += sum(int(e.get("bytes") or 0) for e in manifest["files"].values())
            self.n_verified += 1
        log.info("full sha256 check of %d token shard(s) passed (%.2f GB in %.1f s)", self.n_verified,
                 n_bytes / 1e9, time.perf_counter() - t0)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def check(self, *, wait: bool = False) -> None:
        """Raise the :class:`CorruptFileError` the thread found, if any; ``wait``: first let
        it finish (logged when that takes a while)."""
        if wait and self._thread.is_alive():
            log.info("waiting for the full sha256 check of %d token shard(s) to finish (%d done)",
                     len(self.shard_dirs), self.n_verified)
            self._thread.join()
        if self.error is not None:
            raise self.error

"""Downloads under DESIGN.md's checksum policy, served from file:// URLs; archive extraction."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
import zipfile

import pytest

from cellmamba.datasets import download_file, extract_member, fetch, read_lock, verify_file
from cellmamba.errors import CorruptFileError, InputError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    """A file to download: (url, bytes, path)."""
    src = tmp_path / "upstream" / "file.bin"
    src.parent.mkdir()
    data = b"cellmamba test payload\n" * 100
    src.write_bytes(data)
    return src.as_uri(), data, src


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


def _leftovers(directory):
    return sorted(p.name for p in directory.rglob("*") if ".tmp-" in p.name)


def test_known_sha256_matches(served, data_dir):
    url, data, _ = served
    dest = data_dir / "ds" / "file.bin"
    fetch(url, dest, sha256=_sha(data), lock_file=data_dir / "lock.json")
    assert dest.read_bytes() == data
    assert read_lock(data_dir / "lock.json") == {}  # nothing to record when the checksum is known


def test_known_sha256_mismatch_removes_the_download(served, data_dir):
    url, _, _ = served
    dest = data_dir / "ds" / "file.bin"
    with pytest.raises(CorruptFileError, match="does not match") as err:
        fetch(url, dest, sha256="0" * 64, lock_file=data_dir / "lock.json")
    assert url in str(err.value) and "0" * 64 in str(err.value)
    assert not dest.exists()
    assert _leftovers(data_dir) == []


def test_unknown_sha256_is_recorded_then_verified(served, data_dir, caplog):
    url, data, src = served
    lock = data_dir / "lock.json"
    dest = data_dir / "ds" / "file.bin"
    with caplog.at_level(logging.WARNING):
        fetch(url, dest, lock_file=lock)
    assert "no sha256 known" in caplog.text
    recorded = read_lock(lock)
    assert recorded["ds/file.bin"]["sha256"] == _sha(data)
    assert recorded["ds/file.bin"]["url"] == url
    assert json.loads(lock.read_text())["files"]  # plain JSON on disk

    # a later download (same key) is verified against the lock
    dest.unlink()
    fetch(url, dest, lock_file=lock)
    assert dest.read_bytes() == data

    # upstream changed: the new download is rejected and removed
    dest.unlink()
    src.write_bytes(b"something else")
    with pytest.raises(CorruptFileError, match="lock file"):
        fetch(url, dest, lock_file=lock)
    assert not dest.exists()


def test_explicit_lock_key(served, data_dir):
    url, data, _ = served
    lock = data_dir / "lock.json"
    fetch(url, data_dir / "x" / "renamed.bin", lock_file=lock, key="pbmc10k/metadata")
    assert set(read_lock(lock)) == {"pbmc10k/metadata"}


def test_preplaced_file_is_accepted_and_verified(data_dir, caplog):
    lock = data_dir / "lock.json"
    dest = data_dir / "hpancreas" / "demo_train.h5ad"
    dest.parent.mkdir()
    dest.write_bytes(b"placed by hand")
    with caplog.at_level(logging.WARNING):
        fetch("file:///nonexistent/never-downloaded", dest, lock_file=lock)  # present: not downloaded
    assert read_lock(lock)["hpancreas/demo_train.h5ad"]["sha256"] == _sha(b"placed by hand")
    assert "recorded sha256" in caplog.text
    fetch(None, dest, lock_file=lock, manual="unused")  # verified again against the lock
    dest.write_bytes(b"tampered")
    with pytest.raises(CorruptFileError, match="rejected"):
        fetch(None, dest, lock_file=lock)
    assert not dest.exists()
    assert (dest.parent / "demo_train.h5ad.rejected").read_bytes() == b"tampered"


def test_preplaced_file_against_known_sha256(data_dir):
    dest = data_dir / "ds" / "f.h5ad"
    dest.parent.mkdir()
    dest.write_bytes(b"abc")
    assert verify_file(dest, sha256=_sha(b"abc"), lock_file=None, key="ds/f") == _sha(b"abc")
    with pytest.raises(CorruptFileError, match="ds/f"):
        verify_file(dest, sha256=_sha(b"xyz"), lock_file=None, key="ds/f")
    with pytest.raises(InputError, match="neither"):
        verify_file(data_dir / "other", sha256=None, lock_file=None, key="ds/g")


def test_manual_only_entry(data_dir):
    dest = data_dir / "hpancreas" / "demo_test.h5ad"
    manual = "Download demo_test.h5ad from figshare project 158489 and place it at data/hpancreas/"
    with pytest.raises(InputError, match="figshare project 158489") as err:
        fetch(None, dest, lock_file=data_dir / "lock.json", manual=manual)
    assert str(dest) in str(err.value)
    spec = {"url": None, "name": "demo_test.h5ad", "sha256": None, "manual": manual}
    with pytest.raises(InputError, match="figshare project 158489"):
        download_file(spec, dest, lock_file=data_dir / "lock.json", key="hpancreas/query",
                      archive_dir=data_dir / "_archives")


def test_failed_download_leaves_nothing(data_dir, tmp_path):
    dest = data_dir / "ds" / "f"
    with pytest.raises(ConnectionError, match="download failed"):
        fetch((tmp_path / "missing.bin").as_uri(), dest, lock_file=data_dir / "lock.json")
    assert not dest.exists() and _leftovers(data_dir) == []


def test_corrupt_lock_file(served, data_dir):
    lock = data_dir / "lock.json"
    lock.write_text("{not json")
    with pytest.raises(CorruptFileError, match="lock.json"):
        fetch(served[0], data_dir / "ds" / "f", lock_file=lock)


# --------------------------------------------------------------------------- archives
def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def bundle(tmp_path):
    """A scGPT-figshare-like bundle: outer zip -> inner zips -> mye/*.h5ad, ms/*.h5ad."""
    mye = _zip_bytes({"mye/reference_adata.h5ad": b"REF" * 50, "mye/query_adata.h5ad": b"QUERY" * 50})
    ms = _zip_bytes({"ms/c_data.h5ad": b"C" * 10})
    outer = _zip_bytes({"scGPT_processed_datasets/Fig2_Annotation/mye-20240103T153920Z-001.zip": mye,
                        "scGPT_processed_datasets/Fig2_Annotation/ms-20240103T153851Z-001.zip": ms,
                        "scGPT_processed_datasets/README.txt": b"readme"})
    path = tmp_path / "upstream" / "43939560"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(outer)
    return path


def test_nested_zip_members_share_one_cached_archive(bundle, data_dir):
    url = bundle.as_uri()
    lock = data_dir / "lock.json"
    inner = "scGPT_processed_datasets/Fig2_Annotation/mye-20240103T153920Z-001.zip"
    spec = {"url": url, "name": "query_adata.h5ad", "sha256": _sha(b"QUERY" * 50), "member": f"{inner}::mye/query_adata.h5ad"}
    dest = data_dir / "myeloid" / "query_adata.h5ad"
    download_file(spec, dest, lock_file=lock, key="myeloid/query", archive_dir=data_dir / "_archives")
    assert dest.read_bytes() == b"QUERY" * 50
    assert read_lock(lock)[f"archive:{url}"]["sha256"] == _sha(bundle.read_bytes())

    bundle.unlink()  # the second member comes from the cached archive, not a new download
    spec = {"url": url, "name": "reference_adata.h5ad", "sha256": None, "member": f"{inner}::mye/reference_adata.h5ad"}
    ref = data_dir / "myeloid" / "reference_adata.h5ad"
    download_file(spec, ref, lock_file=lock, key="myeloid/reference", archive_dir=data_dir / "_archives")
    assert ref.read_bytes() == b"REF" * 50
    assert read_lock(lock)["myeloid/reference"]["sha256"] == _sha(b"REF" * 50)
    assert _leftovers(data_dir) == []


def test_extracted_member_with_wrong_sha256_is_removed(bundle, data_dir):
    inner = "scGPT_processed_datasets/Fig2_Annotation/ms-20240103T153851Z-001.zip"
    spec = {"url": bundle.as_uri(), "name": "c_data.h5ad", "sha256": "1" * 64, "member": f"{inner}::ms/c_data.h5ad"}
    dest = data_dir / "ms" / "c_data.h5ad"
    with pytest.raises(CorruptFileError, match="extracted file"):
        download_file(spec, dest, lock_file=data_dir / "lock.json", key="ms/reference",
                      archive_dir=data_dir / "_archives")
    assert not dest.exists()


def test_missing_member_names_the_archive_and_member(bundle, tmp_path):
    with pytest.raises(InputError, match="mye/nothing.h5ad") as err:
        extract_member(bundle, "scGPT_processed_datasets/Fig2_Annotation/mye-20240103T153920Z-001.zip::mye/nothing.h5ad",
                       tmp_path / "out.h5ad")
    assert "mye-20240103T153920Z-001.zip" in str(err.value)
    assert not (tmp_path / "out.h5ad").exists()
    with pytest.raises(CorruptFileError, match="not a zip or tar"):
        extract_member(bundle, "scGPT_processed_datasets/README.txt::x", tmp_path / "out.h5ad")


def test_tar_gz_member_and_gunzip(tmp_path, data_dir):
    tar_path = tmp_path / "norman.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        payload = b"h5ad bytes"
        info = tarfile.TarInfo("norman/perturb_processed.h5ad")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    out = extract_member(tar_path, "norman/perturb_processed.h5ad", tmp_path / "x" / "p.h5ad")
    assert out.read_bytes() == b"h5ad bytes"

    gz = tmp_path / "cite.h5ad.gz"
    gz.write_bytes(gzip.compress(b"cite h5ad"))
    spec = {"url": gz.as_uri(), "name": "cite.h5ad", "sha256": _sha(b"cite h5ad"), "gunzip": True}
    dest = data_dir / "bmmc_cite" / "cite.h5ad"
    download_file(spec, dest, lock_file=data_dir / "lock.json", key="bmmc_cite/h5ad", archive_dir=data_dir / "_archives")
    assert dest.read_bytes() == b"cite h5ad"

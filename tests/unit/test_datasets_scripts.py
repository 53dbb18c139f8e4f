"""workflow_scripts/download_dataset.py and prepare_dataset.py run with a stand-in `snakemake` object."""
from __future__ import annotations

import hashlib
import json
import runpy
from types import SimpleNamespace

import anndata as ad
import pytest

import cellmamba.runlog


class _Named(list):
    """The parts of snakemake's Namedlist the scripts use: positions, attributes, items()."""

    def __init__(self, **named):
        super().__init__(named.values())
        self._named = named
        for key, value in named.items():
            setattr(self, key, value)

    def items(self):
        return self._named.items()


@pytest.fixture
def run_script(repo_root, monkeypatch, tmp_path):
    monkeypatch.setattr(cellmamba.runlog, "setup_logging", lambda *a, **k: None)  # keep pytest's log capture

    def run(name, **parts):
        smk = SimpleNamespace(scriptdir=str(repo_root / "workflow_scripts"), log=[str(tmp_path / f"{name}.log")],
                              **parts)
        runpy.run_path(str(repo_root / "workflow_scripts" / f"{name}.py"), init_globals={"snakemake": smk})
    return run


def test_download_dataset_script(run_script, tmp_path):
    src = tmp_path / "upstream.csv"
    src.write_text("ENSG\nENSG00000000001\n")
    entry = {"files": {"gene_info": {"url": src.as_uri(), "name": "gene_info_pbmc.csv", "sha256": None}}}
    out = tmp_path / "data" / "pbmc10k" / "gene_info_pbmc.csv"
    lock = tmp_path / "data" / "checksums.lock.json"
    run_script("download_dataset", params=_Named(entry=entry, file_key="gene_info", lock_file=str(lock)),
               output=_Named(file=str(out)), wildcards=_Named(dataset="pbmc10k", name="gene_info_pbmc.csv"))
    assert out.read_text() == src.read_text()
    recorded = json.loads(lock.read_text())["files"]["pbmc10k/gene_info"]["sha256"]
    assert recorded == hashlib.sha256(src.read_bytes()).hexdigest()


def test_prepare_dataset_script(run_script, tmp_path):
    entry = {"task": "integration", "reader": "sim_integration", "files": {}, "x_kind": "counts", "simulated": True,
             "keys": {"label_key": "cell_type", "batch_key": "batch"},
             "options": {"n_cells": 120, "n_batches": 2, "seed": 1}, "protocol": {}}
    out = tmp_path / "results" / "datasets" / "sim_integration.h5ad"
    run_script("prepare_dataset", input=_Named(), params=_Named(entry=entry, dataset="sim_integration"),
               output=_Named(h5ad=str(out)), wildcards=_Named(dataset="sim_integration"))
    adata = ad.read_h5ad(out)
    assert adata.n_obs == 120
    info = adata.uns["cellmamba"]
    assert info["dataset"] == "sim_integration" and info["reader"] == "sim_integration" and info["simulated"]
    assert json.loads(info["provenance"])["config"]["options"]["seed"] == 1

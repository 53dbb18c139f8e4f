"""Bad requests to the command line and its helpers end in one clear line, not a traceback:
a `--config` that is not JSON, not an object, has an unknown field or a wrong type; a device the
machine does not have; an output that cannot be written (nothing half-written is left)."""
from __future__ import annotations

import errno

import anndata as ad
import numpy as np
import pytest
import torch

from cellmamba import cli
from cellmamba.errors import CorruptFileError, InputError
from cellmamba.io import write_h5ad_atomic
from cellmamba.tasks.finetune import pick_device


@pytest.mark.parametrize("config,expected", [
    ('{"recipe": scmamba2}', "--config: not valid JSON"),
    ('[1, 2]', "--config: expected an object, got list"),
    ('{"recipe": "scmamba2", "dmodel": 8}', "unknown keys ['dmodel']"),
    ('{"recipe": "scmamba2", "d_model": "big"}', "d_model must be int, got str 'big'"),
    ('{"recipe": "scmamba2", "recompute": 1}', "recompute must be bool, got int 1"),
    ('{"recipe": "scmamba2", "max_steps": true}', "max_steps must be int, got bool True"),
])
def test_bad_config_json_is_one_line_naming_the_field(tmp_path, capsys, config, expected):
    rc = cli.main(["pretrain", "--corpus", str(tmp_path / "m.json"), "--out", str(tmp_path / "o"), "--config", config])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("cellmamba: error: ") and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_config_json_accepts_an_int_for_a_float_field():
    from cellmamba.train.pretrain import PretrainConfig

    assert cli._config_from_json(PretrainConfig, '{"recipe": "scmamba2", "lr": 1, "d_state": null}').lr == 1


def test_an_explicit_device_the_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"device 'cuda' was asked for, but this machine has no CUDA"):
        pick_device("cuda")
    with pytest.raises(InputError, match="not a torch device"):
        pick_device("gpu0")
    assert pick_device(None) == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")


def test_a_failed_h5ad_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"the previous result")
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))

    def full_disk(self, path, *args, **kwargs):
        with open(path, "wb") as fh:  # half a file, then the disk is full
            fh.write(b"\x89HDF\r\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", full_disk)
    with pytest.raises(CorruptFileError, match=r"out\.h5ad: could not be written .*No space left on device"):
        write_h5ad_atomic(adata, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5ad"]  # no hidden temporary
    assert out.read_bytes() == b"the previous result"

"""Checkpoints: kill + resume is bit-identical, damaged checkpoints are detected and skipped."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cellmamba.errors import CorruptFileError, InputError
from cellmamba.train.checkpoint import (capture_rng, export_model, latest_good_checkpoint, list_checkpoints,
                                        load_checkpoint, restore_rng, verify_checkpoint)
from cellmamba.train.loop import TrainConfig, train
from cellmamba.train.schedule import build_optimizer

from _train_toy import ToyModel, toy_loader, toy_objective

HELPER = Path(__file__).with_name("_train_toy.py")


def _run_helper(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, str(HELPER), str(out), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.mark.parametrize("sampler, kill_at, resume_from, epoch, skipped", [
    ("distributed", 5, 4, 0, 8),  # DistributedSampler with set_epoch; resume mid-epoch 0
    ("random", 9, 8, 1, 4),       # RandomSampler seeded from the global RNG at epoch start; resume mid-epoch 1
])
def test_kill_and_resume_is_bit_identical(tmp_path, sampler, kill_at, resume_from, epoch, skipped):
    # 48 rows, batch 4, accum 2: 6 steps per epoch; checkpoints every 2 steps. The SIGKILL after
    # step kill_at loses that step; the resume starts mid-epoch from the checkpoint before it.
    # The collator masks with the global RNG and the model has dropout: RNG states must be restored.
    args = ["--steps", "10", "--checkpoint-every", "2", "--sampler", sampler]
    full = _run_helper(tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr

    killed = _run_helper(tmp_path / "cut", *args, "--kill-at", str(kill_at))
    assert killed.returncode == -9, killed.stderr  # a real SIGKILL, not a clean exit
    names = [p.name for p in list_checkpoints(tmp_path / "cut" / "checkpoints")]
    assert names[-1] == f"step_{resume_from:08d}"
    assert not (tmp_path / "cut" / "model").exists()

    resumed = _run_helper(tmp_path / "cut", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {tmp_path / 'cut' / 'checkpoints' / names[-1]}" in resumed.stderr
    assert f"skipped {skipped} batches already consumed in epoch {epoch}" in resumed.stderr

    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the training curve is the same too, and the lost step appears once
    def curve(out):
        return [line.split(",")[:3] for line in (out / "metrics.csv").read_text().splitlines()]
    assert curve(tmp_path / "full") == curve(tmp_path / "cut")
    assert len(curve(tmp_path / "cut")) == 11


def _small_config(**kw) -> TrainConfig:
    base = dict(lr=0.05, warmup_steps=2, max_steps=6, grad_accum=1, batch_size=4, log_every=1,
                checkpoint_every=2, keep_checkpoints=None, seed=3, progress=False)
    return TrainConfig(**{**base, **kw})


def _train_toy(out: Path, config: TrainConfig) -> ToyModel:
    torch.manual_seed(0)
    model = ToyModel()
    train(model, toy_objective, toy_loader(config.batch_size), config, out_dir=out)
    return model


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the tensor data: safetensors itself would still load it
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, where, message", [
    (_flip_byte, "model/model.safetensors", "does not match the manifest"),
    (_truncate, "optimizer.safetensors", "truncated"),
    (lambda p: p.unlink(), "rng.safetensors", "missing"),
    (_truncate, "manifest.json", "not valid JSON"),
])
def test_damaged_checkpoint_is_skipped_and_previous_used(tmp_path, caplog, damage, where, message):
    out = tmp_path / "run"
    config = _small_config()
    reference = _train_toy(out, config)  # checkpoints at steps 2, 4, 6
    newest = out / "checkpoints" / "step_00000006"
    damage(newest / where)

    with pytest.raises(CorruptFileError, match=message):
        verify_checkpoint(newest)
    with pytest.raises(CorruptFileError):
        load_checkpoint(newest, ToyModel())

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="cellmamba.train.checkpoint"):
        assert latest_good_checkpoint(out / "checkpoints") == out / "checkpoints" / "step_00000004"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "step_00000006" in errors[0].getMessage() and "corrupt" in errors[0].getMessage()
    assert message in errors[0].getMessage()

    # training again resumes from step 4 (not the damaged 6), redoes steps 5-6 identically
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cellmamba.train"):
        torch.manual_seed(123)  # a different init: only the checkpoint can make the weights equal
        model = ToyModel()
        state = train(model, toy_objective, toy_loader(4), config, out_dir=out)
    assert state.resumed_from == str(out / "checkpoints" / "step_00000004")
    assert any("corrupt" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    for (k, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    verify_checkpoint(newest)  # rewritten whole


def test_all_checkpoints_damaged_starts_fresh(tmp_path, caplog):
    out = tmp_path / "run"
    _train_toy(out, _small_config(max_steps=2))
    _flip_byte(out / "checkpoints" / "step_00000002" / "model" / "model.safetensors")
    with caplog.at_level(logging.ERROR, logger="cellmamba.train.checkpoint"):
        assert latest_good_checkpoint(out / "checkpoints") is None
    assert any("starts from scratch" in r.getMessage() for r in caplog.records)


def test_checkpoint_round_trip_restores_optimizer_and_refuses_other_models(tmp_path):
    out = tmp_path / "run"
    config = _small_config(max_steps=2)
    trained = _train_toy(out, config)
    path = out / "checkpoints" / "step_00000002"

    model = ToyModel()
    opt = build_optimizer(model, config)
    ckpt = load_checkpoint(path, model, opt)
    assert ckpt.step == 2 and ckpt.trainer["epoch"] == 0 and ckpt.trainer["batches_in_epoch"] == 2
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    state = opt.state_dict()
    assert len(state["state"]) == len(list(model.parameters()))
    assert all(float(s["step"]) == 2.0 for s in state["state"].values())
    assert isinstance(state["param_groups"][0]["betas"], tuple)
    assert {k.split(".")[0] for k in ckpt.rng} == {"rank0"}

    class Wider(ToyModel):
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(16, 17)

    with pytest.raises(InputError, match="wrong shapes"):
        load_checkpoint(path, Wider())
    assert "pickle" not in (path / "optimizer.json").read_text()


def test_rng_capture_restore_round_trip():
    import random

    import numpy as np

    saved = capture_rng("cpu")
    first = (torch.rand(3), random.random(), np.random.rand(), random.gauss(0, 1))
    restore_rng(saved, "cpu")
    second = (torch.rand(3), random.random(), np.random.rand(), random.gauss(0, 1))
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_model_files_ship_inside_the_atomic_model_export(tmp_path):
    vocab = tmp_path / "gene_stats.tsv"
    vocab.write_text("feature_id\tfeature_name\nENSG1\tA\n")
    out = tmp_path / "run"
    train(ToyModel(), toy_objective, toy_loader(4), TrainConfig(max_steps=2, batch_size=4),
          out_dir=out, model_files={"vocabulary.tsv": vocab})
    assert (out / "model" / "vocabulary.tsv").read_bytes() == vocab.read_bytes()
    assert (out / "model" / "model.safetensors").is_file()
    # a file that cannot be copied: no model directory at all (not one without the file), no leftovers
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError):
        export_model(ToyModel(), tmp_path / "other" / "model", extra_files={"vocabulary.tsv": tmp_path / "missing"})
    assert list((tmp_path / "other").iterdir()) == []


class _Walker(torch.nn.Module):
    """One weight that training walks up by ~lr per step (loss -w, Adam); evaluation scores
    (w - 0.5)^2, so the best evaluation is near w = 0.5, in the middle of the run."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _walker_objective(model, batch):
    w = model.w.sum()
    loss = -w if model.training else (w - 0.5) ** 2
    return loss, {}


def _walker_run(out: Path, *, max_steps=10, crash_at=None, keep_best=True):
    torch.manual_seed(0)
    model = _Walker()
    seen = {}

    def callback(state):
        seen[state.step] = model.w.detach().clone()
        if state.step == crash_at:
            raise RuntimeError("crash")

    config = TrainConfig(lr=0.1, warmup_steps=0, min_lr_ratio=1.0, max_steps=max_steps, batch_size=1, log_every=1,
                         eval_every=1, checkpoint_every=4, keep_checkpoints=None, grad_clip=None, progress=False,
                         keep_best=keep_best)
    batches = [{"x": torch.zeros(1, 1)}] * 4
    state = train(model, _walker_objective, batches, config, out_dir=out, eval_data=batches[:1], step_callback=callback)
    return model, state, seen


def _eval_curve(out: Path) -> dict[int, float]:
    lines = (out / "eval_metrics.csv").read_text().splitlines()
    col = lines[0].split(",")
    return {int(r[col.index("step")]): float(r[col.index("loss")]) for r in (line.split(",") for line in lines[1:])}


def test_keep_best_exports_the_weights_of_the_lowest_eval_loss(tmp_path):
    model, state, seen = _walker_run(tmp_path / "run")
    curve = _eval_curve(tmp_path / "run")
    best = min(curve, key=curve.get)  # the naive argmin over the logged evaluations
    assert 1 < best < 10 and curve[10] > curve[best]  # the best is not the last step
    assert state.best_step == best and state.best_eval_loss == pytest.approx(curve[best])
    assert torch.equal(_weights(tmp_path / "run")["w"], seen[best])  # exported = weights after step `best`
    assert torch.equal(model.w.detach(), seen[best])  # and left in the model for the caller
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]["exported_step"] == best
    # without keep_best the last weights are exported
    _, plain, seen_plain = _walker_run(tmp_path / "plain", keep_best=False)
    assert plain.best_step is None and torch.equal(_weights(tmp_path / "plain")["w"], seen_plain[10])


def test_keep_best_survives_a_crash_and_resume(tmp_path):
    _walker_run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="crash"):
        _walker_run(tmp_path / "cut", crash_at=7)  # checkpoints at 4; best so far at step 5, not checkpointed
    assert sorted(p.name for p in (tmp_path / "cut" / "best").iterdir()) == ["step_00000004.safetensors",
                                                                            "step_00000005.safetensors"]
    # a best file from a step the resumed run repeats (a non-deterministic replay may choose another)
    (tmp_path / "cut" / "best" / "step_00000006.safetensors").write_bytes(b"stale")
    _, state, _ = _walker_run(tmp_path / "cut")  # resumes from step 4, whose best was step 4
    assert torch.equal(_weights(tmp_path / "cut")["w"], _weights(tmp_path / "full")["w"])
    assert state.best_step == 5
    assert [p.name for p in (tmp_path / "cut" / "best").iterdir()] == ["step_00000005.safetensors"]


def test_keep_best_needs_evaluation_data(tmp_path):
    config = TrainConfig(max_steps=2, batch_size=1, keep_best=True, progress=False)
    with pytest.raises(InputError, match="keep_best.*eval_data"):
        train(_Walker(), _walker_objective, [{"x": torch.zeros(1, 1)}], config, out_dir=tmp_path)

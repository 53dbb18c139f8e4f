"""Training loop: schedule, weight decay groups, gradient accumulation, learning a toy task."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from cellmamba.errors import InputError
from cellmamba.train.checkpoint import list_checkpoints
from cellmamba.train.loop import TrainConfig, evaluate, resolve_precision, train, train_step
from cellmamba.train.schedule import build_optimizer, lr_at, param_groups

from _train_toy import ReadCounter, ToyModel, toy_dataset, toy_loader, toy_objective


def test_lr_schedule_matches_hand_computed_values():
    c = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    expected = {
        0: 1e-3 * 1 / 4,          # warmup: lr * (step + 1) / warmup
        2: 1e-3 * 3 / 4,
        3: 1e-3,                  # last warmup step reaches the peak
        4: 1e-3,                  # cosine at progress 0
        9: 1e-4 + 9e-4 * 0.5,     # progress 5/10: cos(pi/2) = 0
        14: 1e-4,                 # the floor, lr * min_lr_ratio
        99: 1e-4,                 # held after max_steps
    }
    for step, lr in expected.items():
        assert lr_at(step, c) == pytest.approx(lr, rel=1e-12), step
    # progress 0.25 at step 6.5 is not a step; step 7 is progress 0.3
    assert lr_at(7, c) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 0.3)), rel=1e-12)
    assert lr_at(0, TrainConfig(lr=2e-3, warmup_steps=0, max_steps=10)) == pytest.approx(2e-3)


def test_no_weight_decay_on_biases_norms_and_flagged_params():
    model = ToyModel()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["embed.weight", "out.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["mix", "norm.bias", "norm.weight", "out.bias"]
    assert no_decay["weight_decay"] == 0.0

    # behaviour: with zero gradients AdamW only decays, so only the decayed parameters move
    config = TrainConfig(lr=0.1, weight_decay=0.5, warmup_steps=0, max_steps=10)
    opt = build_optimizer(model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n in ("embed.weight", "out.weight"):
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p.detach(), before[n]), n


def _batches(n_rows: int, start: int = 0):
    x, y = toy_dataset().tensors
    return {"input_ids": x[start:start + n_rows], "labels": y[start:start + n_rows]}


def test_grad_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    a = ToyModel(dropout=0.0)
    torch.manual_seed(0)
    b = ToyModel(dropout=0.0)  # not copy.deepcopy: it drops the `_no_weight_decay` flag of a Parameter
    # grad_clip small enough to engage: clipping must act on the accumulated gradient. eps=1 makes
    # AdamW's update a smooth function of the gradient (with eps=1e-8 a gradient component of 1e-9
    # rounding noise moves its weight by about lr, which says nothing about accumulation).
    config = TrainConfig(lr=0.05, warmup_steps=0, max_steps=10, grad_clip=0.1, batch_size=4, grad_accum=3, eps=1.0)
    opt_a, opt_b = build_optimizer(a, config), build_optimizer(b, config)
    for step in range(3):
        micro = [_batches(4, 12 * step + 4 * i) for i in range(3)]
        big = {k: torch.cat([m[k] for m in micro]) for k in micro[0]}
        ra = train_step(a, toy_objective, micro, optimizer=opt_a, config=config, step=step)
        rb = train_step(b, toy_objective, [big], optimizer=opt_b, config=config, step=step)
        assert ra["grad_norm"] > 0.1  # clipping was active
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-5)
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
        if step == 0:  # exp_avg = (1 - beta1) * clipped gradient: the gradients themselves agree
            for p_a, p_b in zip(a.parameters(), b.parameters()):
                torch.testing.assert_close(opt_a.state[p_a]["exp_avg"], opt_b.state[p_b]["exp_avg"], atol=1e-7, rtol=1e-5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=n)
    assert opt_a.param_groups[0]["lr"] == pytest.approx(lr_at(2, config))


def test_unequal_passes_weigh_their_cells_like_one_batch():
    """Passes of 3 and 5 cells (a token budget's) make the step of the 8-cell batch: each pass's
    mean loss counts for its share of the cells (equal weights would give 3-cell rows 5/3 the weight)."""
    config = TrainConfig(lr=0.05, warmup_steps=0, max_steps=10, grad_clip=0.0, batch_size=8, eps=1.0)
    runs = []
    for split in ([3, 5], [8], [4, 4]):
        torch.manual_seed(0)
        model = ToyModel(dropout=0.0)
        opt = build_optimizer(model, config)
        starts = [sum(split[:i]) for i in range(len(split))]
        out = train_step(model, toy_objective, [_batches(k, s) for k, s in zip(split, starts)], optimizer=opt,
                         config=config, step=0)
        runs.append((out, [p.detach().clone() for p in model.parameters()]))
    (uneven, w_uneven), (whole, w_whole), _ = runs
    assert uneven["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert uneven["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
    for a, b in zip(w_uneven, w_whole):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # equal weights would not: the 3-cell pass's mean counted as much as the 5-cell pass's
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    with torch.no_grad():
        means = [float(toy_objective(model, _batches(k, s))[0]) for k, s in ((3, 0), (5, 3))]
    assert uneven["loss"] == pytest.approx((3 * means[0] + 5 * means[1]) / 8, rel=1e-6)
    assert abs((means[0] + means[1]) / 2 - uneven["loss"]) > 1e-4


def test_train_step_changes_parameters_and_sets_lr():
    torch.manual_seed(0)
    model = ToyModel()
    config = TrainConfig(lr=1e-2, warmup_steps=10, max_steps=20, batch_size=4)
    opt = build_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    out = train_step(model, toy_objective, [_batches(4)], optimizer=opt, config=config, step=4)
    assert math.isfinite(out["loss"]) and out["lr"] == pytest.approx(1e-2 * 5 / 10) and "accuracy" in out
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(InputError, match="scalar"):
        train_step(model, lambda m, b: (m(b["input_ids"]).sum(-1), {}), [_batches(4)], optimizer=opt,
                   config=config, step=0)


def test_loss_falls_on_a_learnable_task_and_outputs_are_written(tmp_path):
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    config = TrainConfig(lr=0.05, warmup_steps=5, max_steps=60, batch_size=8, log_every=5, checkpoint_every=20,
                         keep_checkpoints=2, eval_every=30, seed=0, progress=False)
    state = train(model, toy_objective, toy_loader(8, mask_prob=0.0), config, out_dir=tmp_path,
                  eval_data=toy_loader(8, mask_prob=0.0, shuffle=False))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 61, 5))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert first > 2.0 and last < 0.3 * first, (first, last)  # log(16) = 2.77 at chance
    assert float(rows[-1]["accuracy"]) > 0.9
    assert {"lr", "grad_norm", "tokens_per_s", "epoch"} <= set(rows[0])
    evals = list(csv.DictReader(open(tmp_path / "eval_metrics.csv")))
    assert [int(r["step"]) for r in evals] == [30, 60] and float(evals[-1]["loss"]) < float(evals[0]["loss"])

    assert state.step == 60 and state.last_metrics["step"] == 60
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_00000040", "step_00000060"]
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "model" / "config.json").read_text())["class"].endswith("ToyModel")
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["config"]["train"]["max_steps"] == 60 and prov["config"]["final_step"] == 60
    pytest.importorskip("matplotlib")
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    # a second call finds the final checkpoint and trains nothing more
    again = train(model, toy_objective, toy_loader(8, mask_prob=0.0), config, out_dir=tmp_path)
    assert again.resumed_from.endswith("step_00000060") and again.step == 60


def test_evaluate_leaves_rng_and_mode_untouched():
    model = ToyModel(dropout=0.5).train()
    loader = toy_loader(8)  # the collator draws random masks from the global RNG
    torch.manual_seed(5)
    result = evaluate(model, toy_objective, loader, max_batches=2)
    after_eval = torch.rand(4)
    torch.manual_seed(5)
    assert torch.equal(after_eval, torch.rand(4))
    assert model.training and set(result) == {"loss", "accuracy"}


def _per_cell_objective(model, batch):
    """Loss: the batch's mean of a per-cell value x; metric ``x2``: the mean of x**2."""
    x = batch["x"].double()
    return x.mean(), {"x2": float((x * x).mean())}


def _value_batches(x, sizes):
    ends = np.cumsum(sizes)
    return [{"input_ids": torch.zeros(b - a, 3, dtype=torch.long), "x": torch.as_tensor(x[a:b])}
            for a, b in zip(ends - sizes, ends)]


def test_evaluate_means_over_cells_not_batches():
    x = np.random.default_rng(0).normal(size=5)
    result = evaluate(torch.nn.Linear(1, 1), _per_cell_objective, _value_batches(x, np.array([4, 1])))
    # the mean over the 5 cells; a mean of the two batch means would count cell 5 as four cells
    assert result["loss"] == pytest.approx(np.mean(x), rel=1e-12)
    assert result["x2"] == pytest.approx(np.mean(x ** 2), rel=1e-12)
    assert abs(np.mean(x) - (x[:4].mean() + x[4]) / 2) > 0.1  # the two differ on this draw


def test_evaluate_over_ranks_is_the_mean_over_all_cells(monkeypatch):
    import cellmamba.train.loop as loop
    from cellmamba.train.distributed import DistEnv

    x = np.random.default_rng(1).normal(size=9)
    shares = (_value_batches(x[:5], np.array([4, 1])), _value_batches(x[5:], np.array([3, 1])))  # 2 and 2 batches
    env = DistEnv(rank=0, world_size=2, backend="gloo")
    sent = []
    monkeypatch.setattr(loop, "all_reduce_mean", lambda vec, env: (sent.append(vec) or vec).clone())
    evaluate(torch.nn.Linear(1, 1), _per_cell_objective, shares[1], env=env)  # what rank 1 contributes
    other = sent[0]
    monkeypatch.setattr(loop, "all_reduce_mean", lambda vec, env: (vec + other) / 2)
    result = evaluate(torch.nn.Linear(1, 1), _per_cell_objective, shares[0], env=env)
    assert result["loss"] == pytest.approx(np.mean(x), rel=1e-12)
    assert result["x2"] == pytest.approx(np.mean(x ** 2), rel=1e-12)


def test_precision_and_config_validation():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    with pytest.raises(InputError, match="bf16.*CUDA"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(InputError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="fp16")
    c = TrainConfig(betas=[0.8, 0.9])
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(InputError, match="unknown keys"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_loader_batch_size_mismatch_is_an_error(tmp_path):
    with pytest.raises(InputError, match="batch_size"):
        train(ToyModel(), toy_objective, toy_loader(4), TrainConfig(batch_size=8, max_steps=1, progress=False),
              out_dir=tmp_path)


def test_train_step_reads_the_device_once_per_step_however_many_micro_batches(monkeypatch):
    """Metrics stay tensors through the micro-batches; the step reads them with the gradient norm in
    one transfer (issue 23: no per-step host synchronisation beyond the one the update needs). The
    returned means are the hand-computed means of the micro-batches' values."""
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    config = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=10, batch_size=4, grad_accum=3, grad_clip=1.0)
    opt = build_optimizer(model, config)
    step_fn = opt.step

    def objective(m, batch):
        logits = m(batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
        hits = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": hits.detach(), "rows": float(batch["input_ids"].shape[0])}

    micro = [_batches(4, 4 * i) for i in range(3)]
    with torch.no_grad():
        want = [objective(model, b) for b in micro]
    counter = ReadCounter(monkeypatch)

    def paused_step(*a, **k):
        counter.paused = True
        try:
            return step_fn(*a, **k)
        finally:
            counter.paused = False
    monkeypatch.setattr(opt, "step", paused_step)
    out = train_step(model, objective, micro, optimizer=opt, config=config, step=0)
    reads = counter.n
    monkeypatch.undo()
    assert reads == 1, reads
    assert out["loss"] == pytest.approx(sum(float(w[0]) for w in want) / 3, rel=1e-6)
    assert out["accuracy"] == pytest.approx(sum(float(w[1]["accuracy"]) for w in want) / 3, rel=1e-6)
    assert out["rows"] == 4.0 and math.isfinite(out["grad_norm"]) and out["grad_norm"] > 0


def _device_objective(m, batch):
    logits = m(batch["input_ids"])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).float().mean().detach()}


def test_train_step_without_read_never_waits_for_the_device(monkeypatch):
    """read=False with the fused AdamW: no read at all in the step, the update included (the skip of
    a non-finite step is the kernel's found_inf); the values, read afterwards, and the weights equal
    those of the reading step."""
    config = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=10, batch_size=4, grad_accum=2, grad_clip=1.0)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(ToyModel(dropout=0.0))
    opts = [build_optimizer(m, config) for m in models]
    assert all(o.defaults["fused"] for o in opts)
    micro = [_batches(4, 4 * i) for i in range(2)]
    want = train_step(models[0], _device_objective, micro, optimizer=opts[0], config=config, step=0)
    counter = ReadCounter(monkeypatch)
    got = train_step(models[1], _device_objective, micro, optimizer=opts[1], config=config, step=0, read=False)
    reads = counter.n
    monkeypatch.undo()
    assert reads == 0, reads
    assert all(torch.is_tensor(got[k]) for k in ("loss", "grad_norm", "skipped", "accuracy"))
    assert got["lr"] == want["lr"]
    values = {k: float(v) for k, v in got.items()}
    assert values == pytest.approx(want, rel=1e-12)
    assert values["skipped"] == 0.0
    for pa, pb in zip(*(m.parameters() for m in models)):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("read", [True, False])
def test_a_non_finite_gradient_skips_the_update(fused, read, caplog):
    """A NaN loss at step 1: weights, AdamW's moments and its step count are those after step 0
    (the device-side skip of the fused kernel and the host's skip of another AdamW alike), and the
    next finite step is the step an uninterrupted optimizer takes second."""
    config = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=10, batch_size=4)

    def nan_objective(m, batch):
        loss, metrics = _device_objective(m, batch)
        return loss * float("nan"), metrics

    runs = []
    for poison in (True, False):
        torch.manual_seed(0)
        model = ToyModel(dropout=0.0)
        opt = build_optimizer(model, config)
        if not fused:
            opt = torch.optim.AdamW(opt.param_groups, betas=config.betas, eps=config.eps)
        assert bool(opt.defaults.get("fused")) == fused
        train_step(model, _device_objective, [_batches(4)], optimizer=opt, config=config, step=0)
        after0 = [p.detach().clone() for p in model.parameters()]
        moments0 = [opt.state[p]["exp_avg_sq"].clone() for p in model.parameters()]
        if poison:
            with caplog.at_level("WARNING", logger="cellmamba.train.loop"):
                out = train_step(model, nan_objective, [_batches(4, 4)], optimizer=opt, config=config, step=1,
                                 read=read)
            assert float(out["skipped"]) == 1.0 and not math.isfinite(float(out["grad_norm"]))
            assert ("update is skipped" in caplog.text) == read
            assert all(torch.equal(a, p) for a, p in zip(after0, model.parameters()))
            assert all(torch.equal(v, opt.state[p]["exp_avg_sq"]) for v, p in zip(moments0, model.parameters()))
            assert all(float(opt.state[p]["step"]) == 1.0 for p in model.parameters())
        train_step(model, _device_objective, [_batches(4, 8)], optimizer=opt, config=config, step=1)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_the_loop_reports_skipped_updates_at_its_log_row(tmp_path, caplog):
    """The loop reads its steps' values only at log rows: a skipped update at step 3 appears in the
    warning of the row that covers it and as the row's fraction of skipped steps."""
    torch.manual_seed(0)
    calls = {"n": 0}

    def objective(m, batch):
        calls["n"] += 1
        loss, metrics = _device_objective(m, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    config = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=8, batch_size=8, log_every=4, checkpoint_every=8,
                         progress=False)
    with caplog.at_level("WARNING", logger="cellmamba.train.loop"):
        train(ToyModel(dropout=0.0), objective, toy_loader(8, mask_prob=0.0), config, out_dir=tmp_path)
    assert "steps 1-4: 1 of the 4 updates were skipped" in caplog.text
    assert "steps 5-8" not in caplog.text
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["skipped"]) for r in rows] == [0.25, 0.0]
    assert math.isfinite(float(rows[1]["loss"]))


def test_peak_flops_and_mfu_hand_computed():
    """Dense bf16 peaks by device name (PCIe before SXM, A100 not taken for an A10), none for fp32
    or an unknown GPU; MFU = 6 N tokens/s over each GPU's peak."""
    from cellmamba.train.metrics_log import model_flops_utilisation, peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H200", "fp16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12 and peak_flops("NVIDIA A10", "bf16") == 125e12
    assert peak_flops("NVIDIA H200", "fp32") is None and peak_flops("Some GPU 9000", "bf16") is None
    # 20.9 M parameters at 0.96 M tokens/s on one H200: 6 x 20.9e6 x 0.96e6 / 989e12 = 12.2%
    assert model_flops_utilisation(20_900_000, 960_000, 989e12) == pytest.approx(0.12172, rel=1e-4)
    assert model_flops_utilisation(20_900_000, 2 * 960_000, 989e12, world_size=2) == pytest.approx(0.12172, rel=1e-4)

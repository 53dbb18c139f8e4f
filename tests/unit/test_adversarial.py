"""The adversarial batch term (issue "Evidence that the models learn", item 3): the gradients
each player gets, the reversal schedule, the discriminator's own learning rate, and the
evidence on simulated cells with a strong batch effect that the discriminator learns with the
reversal off and that the reversal lowers the batch information of the embeddings."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cellmamba.errors import InputError
from cellmamba.models import BackboneOutput, ClassifierHead
from cellmamba.tasks import FinetuneConfig
from cellmamba.tasks.finetune import AdversarialObjective, reversal_weight, standardize_cells
from cellmamba.train.config import TrainConfig
from cellmamba.train.loop import train_step
from cellmamba.train.schedule import build_optimizer, lr_at, param_groups

from conftest import REPO


class _Encoder(nn.Module):
    """input_ids (B, L) float features -> hidden (B, L, 4); a ``batch`` head on the mean."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"batch": ClassifierHead(4, 2, pooling="cls", hidden=4)})

    def forward(self, x, attention_mask):
        return BackboneOutput(hidden=self.proj(x), attention_mask=attention_mask)


class _NoSSL:
    """A self-supervised term of 0 that keeps the graph (only the adversary's gradients remain)."""

    def loss_from_output(self, model, out, batch):
        return out.hidden.sum() * 0.0, {}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randn(6, 5, 3, generator=g), "attention_mask": torch.ones(6, 5, dtype=torch.bool),
            "cell_index": torch.arange(6)}


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_the_discriminator_gets_the_plain_gradient_and_only_the_encoder_the_reversed_one():
    torch.manual_seed(0)
    model, batch = _Encoder(), _batch()
    labels = np.array([0, 1, 0, 1, 1, 0])
    objective = AdversarialObjective(_NoSSL(), labels, weight=0.5, pooling="mean", schedule="constant")
    loss, metrics = objective(model, batch)
    got = _grads(model, loss)
    # the same discriminator loss without any reversal: what a plain classifier would get
    emb = model(batch["input_ids"], batch["attention_mask"]).hidden.mean(1)
    from cellmamba.tasks.finetune import _pooled_output

    plain = F.cross_entropy(model.heads["batch"](_pooled_output(standardize_cells(emb))), torch.tensor(labels))
    want = _grads(model, plain)
    assert metrics["adv_loss"] == pytest.approx(float(plain.detach()), rel=1e-6) and metrics["adv_lambda"] == 0.5
    for name in got:
        factor = 1.0 if name.startswith("heads.batch") else -0.5  # the head minimises; the encoder is pushed away
        torch.testing.assert_close(got[name], factor * want[name], rtol=1e-5, atol=1e-7, msg=name)
        assert got[name].abs().sum() > 0, name


def test_reversal_weight_zero_still_trains_the_discriminator_and_leaves_the_encoder_alone():
    torch.manual_seed(0)
    model, batch = _Encoder(), _batch()
    objective = AdversarialObjective(_NoSSL(), np.array([0, 1] * 3), weight=0.0, pooling="mean")
    grads = _grads(model, objective(model, batch)[0])
    assert all(grads[n].abs().sum() > 0 for n in grads if n.startswith("heads.batch"))
    assert all(torch.equal(grads[n], torch.zeros_like(grads[n])) for n in grads if n.startswith("proj"))


def test_evaluation_returns_the_self_supervised_loss_alone():
    class SSL:
        def loss_from_output(self, model, out, batch):
            return out.hidden.pow(2).mean(), {}

    model, batch = _Encoder(), _batch()
    objective = AdversarialObjective(SSL(), np.array([0, 1] * 3), weight=1.0, pooling="mean")
    train_loss, m = objective(model, batch)
    assert float(train_loss.detach()) == pytest.approx(float(m["ssl_loss"] + m["adv_loss"]), rel=1e-6)
    model.eval()
    eval_loss, m = objective(model, batch)
    assert float(eval_loss.detach()) == pytest.approx(float(m["ssl_loss"]), rel=1e-6) and m["adv_loss"] > 0


def test_reversal_weight_schedules_match_hand_computed_values():
    assert reversal_weight(0.0, 2.0, "constant") == reversal_weight(0.7, 2.0, "constant") == 2.0
    assert reversal_weight(0.0, 2.0, "dann") == 0.0
    assert reversal_weight(0.5, 2.0, "dann") == pytest.approx(2.0 * (2 / (1 + math.exp(-5)) - 1))
    assert reversal_weight(1.0, 1.0, "dann") == pytest.approx(0.9999092, abs=1e-7)
    assert reversal_weight(math.log(3) / 10, 1.0, "dann") == pytest.approx(0.5)  # half way at p = ln(3) / 10
    with pytest.raises(InputError, match="schedule"):
        reversal_weight(0.5, 1.0, "linear")
    with pytest.raises(InputError, match="adversarial_schedule"):
        FinetuneConfig(adversarial_schedule="linear")
    with pytest.raises(InputError, match="adversarial_lr_scale"):
        FinetuneConfig(adversarial_lr_scale=0)


def test_train_step_tells_the_objective_its_step():
    model = _Encoder()
    objective = AdversarialObjective(_NoSSL(), np.array([0, 1] * 3), weight=1.0, pooling="mean", schedule="dann")
    config = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=11)
    opt = build_optimizer(model, config)
    seen = []
    for step in (0, 5, 10):
        seen.append(train_step(model, objective, [_batch(step)], optimizer=opt, config=config, step=step)["adv_lambda"])
    assert seen == pytest.approx([0.0, reversal_weight(0.5, 1.0), reversal_weight(1.0, 1.0)])


def test_a_parameter_lr_scale_gets_its_own_group_and_learning_rate():
    model = _Encoder()
    assert len(param_groups(model, 0.1)) == 2  # nothing scaled: the two groups checkpoints already hold
    for p in model.heads["batch"].parameters():
        p._lr_scale = 10.0
    groups = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [sorted(names[id(p)] for p in g["params"]) for g in groups] == [
        ["proj.weight"], ["proj.bias"],
        ["heads.batch.mlp.0.weight", "heads.batch.mlp.3.weight"], ["heads.batch.mlp.0.bias", "heads.batch.mlp.3.bias"]]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0, 0.1, 0.0]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 1.0, 10.0, 10.0]
    config = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=20)
    opt = build_optimizer(model, config)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr_at(0, config)] * 2 + [10 * lr_at(0, config)] * 2)
    objective = AdversarialObjective(_NoSSL(), np.array([0, 1] * 3), weight=0.0, pooling="mean")
    out = train_step(model, objective, [_batch()], optimizer=opt, config=config, step=3)
    assert out["lr"] == pytest.approx(lr_at(3, config))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr_at(3, config)] * 2 + [10 * lr_at(3, config)] * 2)
    model.proj.weight._lr_scale = -1.0
    with pytest.raises(InputError, match="_lr_scale"):
        param_groups(model, 0.1)


class _Quadratic(nn.Module):
    """Two parameters whose gradients are set by hand: loss = a . w + b . v, so dloss/dw = a."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.v = nn.Parameter(torch.zeros(2))


def test_each_lr_scale_group_is_clipped_on_its_own():
    """An encoder gradient of norm 1,000 is clipped to 1 without shrinking the scaled head's
    gradient of norm 0.5 (one global clip would scale both by 1/1000). SGD, so the update is lr
    times the clipped gradient, compared with values computed by hand."""
    model = _Quadratic()
    model.v._lr_scale = 100.0
    a = torch.tensor([600.0, 0.0, 800.0])  # norm 1000
    b = torch.tensor([0.3, 0.4])           # norm 0.5
    opt = torch.optim.SGD(param_groups(model, 0.0), lr=0.0)
    config = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=1, grad_clip=1.0)

    def objective(m, batch):
        return (a * m.w).sum() + (b * m.v).sum(), {}

    out = train_step(model, objective, [{"x": torch.zeros(1)}], optimizer=opt, config=config, step=0, device="cpu")
    assert out["grad_norm"] == pytest.approx(math.hypot(1000.0, 0.5))
    assert out["grad_norm_lr_x100"] == pytest.approx(0.5)
    assert model.w.detach().numpy() == pytest.approx([-0.006, 0.0, -0.008])    # -1e-2 * a / 1000
    assert model.v.detach().numpy() == pytest.approx([-0.3, -0.4])             # -1e-2 * 100 * b, not clipped
    # without a scaled group the clip is the global one, as before
    plain = _Quadratic()
    opt = torch.optim.SGD(param_groups(plain, 0.0), lr=0.0)
    out = train_step(plain, objective, [{"x": torch.zeros(1)}], optimizer=opt, config=config, step=0, device="cpu")
    scale = 1.0 / math.hypot(1000.0, 0.5)
    assert plain.w.detach().numpy() == pytest.approx((-1e-2 * scale * a).numpy())
    assert plain.v.detach().numpy() == pytest.approx((-1e-2 * scale * b).numpy())
    assert not any(k.startswith("grad_norm_lr_x") for k in out)


def test_standardize_cells_centres_and_scales_each_dimension():
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    z = standardize_cells(x)
    # column 0: mean 3, population variance 8/3
    torch.testing.assert_close(z[:, 0], torch.tensor([-2.0, 0.0, 2.0]) / math.sqrt(8 / 3 + 1e-5))
    assert torch.equal(z[:, 1], torch.zeros(3))  # a dimension every cell shares carries nothing


def _bench():
    spec = importlib.util.spec_from_file_location("adversarial_cpu", REPO / "benchmarks" / "adversarial_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_with_the_reversal_off_the_discriminator_learns_and_on_the_embedding_loses_batch_information(tmp_path):
    """Simulated cells, 3 batches with gene-wise log batch factors of sd 2 (a linear probe tells
    the batches apart from the embeddings at ~0.9), a 1-layer genemamba (d_model 32), 10 epochs.
    Reversal off (weight 0): the discriminator's loss falls well below ln(3). On (weight 1, the
    DANN ramp): the discriminator is held near chance and the probe's accuracy falls (by
    0.06-0.15 over seeds 0-4; benchmarks/adversarial_cpu.py), the cell types still readable."""
    from cellmamba.tasks import run_integration

    bench = _bench()
    adata, vocab = bench.simulated_cells(n_cells=300, n_genes=32, n_batches=3, batch_effect_sd=2.0, seed=0)
    model_dir = bench.tiny_model(tmp_path / "pretrained", "genemamba", 32, n_layers=1)
    batches, types = adata.obs["batch"].astype(str).to_numpy(), adata.obs["cell_type"].astype(str).to_numpy()
    runs = {}
    for weight in (0.0, 1.0):
        cfg = FinetuneConfig(epochs=10, lr=1e-3, batch_size=32, max_len=33, backend="torch", keep_best=False,
                             adversarial_weight=weight)
        emb = run_integration(adata, model_dir, vocab, config=cfg, out_dir=tmp_path / f"w{weight:g}")
        runs[weight] = (pd.read_csv(tmp_path / f"w{weight:g}" / "metrics.csv"), bench.probe_accuracy(emb, batches),
                        bench.probe_accuracy(emb, types))
    (off, probe_off, _), (on, probe_on, types_on) = runs[0.0], runs[1.0]
    chance = math.log(3)
    assert (off.adv_lambda == 0).all() and on.adv_lambda.iloc[0] < 0.5 < 0.99 < on.adv_lambda.iloc[-1]
    # it learns the batches: its loss falls, well below chance
    assert off.adv_loss.tail(3).mean() < min(chance - 0.15, off.adv_loss.head(3).mean() - 0.1), off.adv_loss.tolist()
    assert on.adv_loss.tail(3).mean() > off.adv_loss.tail(3).mean() + 0.1
    assert probe_off > 0.8  # the batch effect is strong in the embedding the encoder makes unopposed
    assert probe_on < probe_off - 0.05, (probe_off, probe_on)
    assert types_on > 0.6  # chance: 0.25 to 0.4

"""Perturbation fine-tuning: the model (padding, flags, pretrained weights), the control pairing,
the max_len gene subsets, prediction against a naive per-cell loop, and a run on a small
learnable synthetic task."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellmamba.errors import InputError
from cellmamba.models import BackboneConfig, CellModel, CellModelConfig, EmbeddingConfig, HeadConfig
from cellmamba.models.checkpoint import read_weights
from cellmamba.models.perturb import PerturbationModel
from cellmamba.tasks.perturb import (PerturbationBatches, PerturbConfig, condition_flags, control_pool, pair_controls,
                                     predict_conditions, run_perturbation)
from cellmamba.vocab import N_SPECIAL

GENES = [f"G{i}" for i in range(10)]
VOCAB = pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(len(GENES))], "feature_name": GENES,
                      "nonzero_median": np.ones(len(GENES))})
ARCHS = ["bimamba_mamba2", "bimamba_mamba1", "mamba2", "transformer"]


def _cell_model(arch="bimamba_mamba2", kind="binned", seed=0):
    torch.manual_seed(seed)
    emb = (EmbeddingConfig(kind="patch", patch_size=4, max_patches=8) if kind == "patch"
           else EmbeddingConfig(kind=kind, vocab_size=N_SPECIAL + len(GENES)))
    bb = BackboneConfig(arch=arch, d_model=16, n_layers=2, d_state=8, headdim=8, chunk_size=4, n_heads=2,
                        backend="torch")
    return CellModel(CellModelConfig(embedding=emb, backbone=bb, heads={"value": HeadConfig(kind="value_regression")}))


def _saved(tmp_path, arch="bimamba_mamba2", kind="binned"):
    model = _cell_model(arch, kind)
    return model, model.save_pretrained(tmp_path / f"{kind}_{arch}")


def _perturb_model(arch="bimamba_mamba2", kind="binned", seed=1):
    return PerturbationModel(_cell_model(arch, kind), seed=seed).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_change_real_token_predictions(arch):
    model = _perturb_model(arch)
    rng = np.random.default_rng(0)
    lengths = [7, 4, 2]
    L = max(lengths)
    ids = torch.zeros(3, L, dtype=torch.long)
    vals = torch.zeros(3, L)
    flags = torch.full((3, L), 5, dtype=torch.long)  # padding flags may hold anything
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.from_numpy(rng.choice(len(GENES), n, replace=False) + N_SPECIAL)
        vals[i, :n] = torch.from_numpy(rng.random(n).astype(np.float32) * 3)
        flags[i, :n] = 0
        flags[i, 0] = 1
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(ids, vals, flags, mask)
        for i, n in enumerate(lengths):
            alone = model(ids[i:i + 1, :n], vals[i:i + 1, :n], flags[i:i + 1, :n], mask[i:i + 1, :n])
            torch.testing.assert_close(padded[i, :n], alone[0], atol=1e-5, rtol=1e-5)
    assert (padded[~mask] == 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_the_flag_enters_the_model(arch):
    model = _perturb_model(arch)
    ids = torch.arange(6)[None] + N_SPECIAL
    vals = torch.linspace(0, 2, 6)[None]
    flags = torch.zeros(1, 6, dtype=torch.long)
    with torch.no_grad():
        plain = model(ids, vals, flags)
        flags[0, 2] = 1
        flagged = model(ids, vals, flags)
    assert (plain - flagged)[0, 2].abs() > 1e-4
    # a unidirectional model sees the flag only from position 2 on
    if arch == "mamba2":
        torch.testing.assert_close(plain[0, :2], flagged[0, :2])
    with pytest.raises(InputError, match="flags must be 0 or 1"):
        model(ids, vals, flags * 2)
    with pytest.raises(InputError, match="token ids"):
        model(ids + 100, vals, flags)


@pytest.mark.parametrize("kind", ["binned", "rank"])
def test_pretrained_weights_are_loaded_exactly(tmp_path, kind):
    _, path = _saved(tmp_path, "bimamba_mamba2", kind)
    saved = read_weights(path / "model.safetensors")
    model = PerturbationModel.from_pretrained(path, backend="torch", seed=3)
    state = model.state_dict()
    used = {k for k in saved if k == "embed.gene.weight" or k.startswith("backbone.")}
    assert torch.equal(state["gene.weight"], saved["embed.gene.weight"])
    for k in used - {"embed.gene.weight"}:
        assert torch.equal(state[k], saved[k]), k
    # everything else is new: the value encoder, the flag embedding and the head
    new = {k.split(".")[0] for k in state if k != "gene.weight" and not k.startswith("backbone.")}
    assert new == {"value_encoder", "flag", "head"}
    # the new modules come from the seed and leave the global RNG alone
    pretrained = CellModel.from_pretrained(path, backend="torch")
    before = torch.get_rng_state()
    again = PerturbationModel(pretrained, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(again.head.mlp[0].weight, model.head.mlp[0].weight)


def test_a_scratch_control_draws_the_gene_embedding_and_backbone_and_keeps_the_new_modules(tmp_path):
    _, path = _saved(tmp_path, "bimamba_mamba2", "rank")
    saved = read_weights(path / "model.safetensors")
    pretrained = PerturbationModel.from_pretrained(path, backend="torch", seed=3).state_dict()
    before = torch.get_rng_state()
    scratch = PerturbationModel.from_pretrained(path, backend="torch", seed=3, init="scratch").state_dict()
    assert torch.equal(torch.get_rng_state(), before)  # drawn from the seed, the global stream untouched
    assert not torch.equal(scratch["gene.weight"], saved["embed.gene.weight"])
    body = [k for k in scratch if k.startswith("backbone.")]
    drawn = [k for k in body if not torch.equal(scratch[k], saved[k])]  # all but constant inits (norms, A, D)
    assert len(drawn) > len(body) / 2
    again = PerturbationModel.from_pretrained(path, backend="torch", seed=3, init="scratch").state_dict()
    assert all(torch.equal(again[k], v) for k, v in scratch.items())
    for k in (k for k in scratch if k.split(".")[0] in ("value_encoder", "flag", "head")):
        assert torch.equal(scratch[k], pretrained[k]), k


def test_patch_model_and_bad_config_are_refused(tmp_path):
    _, path = _saved(tmp_path, "mamba2", "patch")
    with pytest.raises(InputError, match="gene tokens"):
        PerturbationModel.from_pretrained(path, backend="torch")
    with pytest.raises(InputError, match=r"unknown keys \['n_bins'\]"):
        PerturbConfig.from_dict({"epochs": 2, "n_bins": 0})
    with pytest.raises(InputError, match="max_len"):
        PerturbConfig(max_len=1)
    with pytest.raises(InputError, match="pool_size"):
        PerturbConfig(pool_size=0)
    assert PerturbConfig.from_dict({"epochs": 2}).epochs == 2


def test_pairing_is_seeded_and_pairs_only_with_controls():
    conds = np.array(["ctrl", "G1+ctrl", "ctrl", "G2+G3", "ctrl+G4", "G1+ctrl", "ctrl", "G2+G3", "G5+ctrl"] * 5)
    pert, ctrl = pair_controls(conds, ["G1+ctrl", "G2+G3", "ctrl"], seed=4)
    np.testing.assert_array_equal(pert, np.flatnonzero(np.isin(conds, ["G1+ctrl", "G2+G3"])))
    assert (conds[ctrl] == "ctrl").all() and len(ctrl) == len(pert)
    p2, c2 = pair_controls(conds, ["G2+G3", "G1+ctrl"], seed=4)
    np.testing.assert_array_equal(p2, pert)
    np.testing.assert_array_equal(c2, ctrl)
    _, c3 = pair_controls(conds, ["G1+ctrl", "G2+G3"], seed=5)
    assert not np.array_equal(c3, ctrl)
    with pytest.raises(InputError, match="no control cells"):
        pair_controls(np.array(["G1+ctrl", "G2+G3"]), ["G1+ctrl"], seed=0)


def test_condition_flags_and_unflagged_genes(caplog):
    flags, lost = condition_flags(["ctrl", "ctrl+G2", "G3+G1", "G1+QQ"], ["G1", "G2", "G3"])
    np.testing.assert_array_equal(flags, [[0, 0, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0]])
    assert lost == {"G1+QQ": ["QQ"]}
    assert "QQ" in caplog.text
    with pytest.raises(InputError, match="expected 'ctrl'"):
        condition_flags(["G1+G2+G3"], ["G1"])


def test_training_batches_keep_perturbed_genes_in_the_subset_in_gene_order():
    rng = np.random.default_rng(0)
    n_cells, G, max_len = 40, 30, 5
    X = sp.csr_matrix(rng.poisson(0.7, size=(n_cells, G)).astype(np.float32))
    pert, ctrl = np.arange(20, 40), rng.integers(0, 20, size=20)
    flags = np.zeros((20, G), bool)
    for i in range(20):
        flags[i, rng.choice(G, 1 + i % 2, replace=False)] = True
    gene_ids = np.arange(G) * 3 + 7  # any token ids: recovered below to check the gathered columns
    data = PerturbationBatches(X, pert, ctrl, flags=flags, gene_ids=gene_ids, batch_size=6, max_len=max_len, seed=1)
    dense = X.toarray()
    seen = []
    for batch in data.for_epoch(2):
        cols = (batch["input_ids"].numpy() - 7) // 3
        rows = np.searchsorted(pert, batch["cell_index"].numpy())
        assert cols.shape[1] == max_len and (np.diff(cols, axis=1) > 0).all()  # gene-set order
        for b, r in enumerate(rows):
            assert set(np.flatnonzero(flags[r])) <= set(cols[b])  # every perturbed gene is inside
            np.testing.assert_array_equal(batch["flags"][b].numpy(), flags[r, cols[b]])
            np.testing.assert_array_equal(batch["values"][b].numpy(), dense[ctrl[r], cols[b]])
            np.testing.assert_array_equal(batch["target"][b].numpy(), dense[pert[r], cols[b]])
        seen.extend(rows)
    assert sorted(seen) == list(range(20)) and len(data) == 4
    again = [b["input_ids"] for b in data.for_epoch(2)]
    assert all(torch.equal(a, b["input_ids"]) for a, b in zip(again, data.for_epoch(2)))
    assert not all(torch.equal(a, b["input_ids"]) for a, b in zip(again, data.for_epoch(3)))
    # a gene set within max_len: every gene, in order
    full = next(iter(PerturbationBatches(X, pert, ctrl, flags=flags, gene_ids=gene_ids, batch_size=4, max_len=G, seed=1)))
    assert (full["input_ids"] == torch.from_numpy(gene_ids)).all()


def test_predict_conditions_is_the_mean_of_per_cell_predictions():
    model = _perturb_model("bimamba_mamba2")
    rng = np.random.default_rng(2)
    names = ["G0", "G1", "G2", "G3", "G4", "G5"]
    gene_ids = np.array([0, 1, 2, 3, 4, 5]) + N_SPECIAL
    ctrl = rng.random((9, 6)).astype(np.float32) * 2
    conds = ["G1+ctrl", "G2+G3", "ctrl", "QQ+ctrl"]
    got = predict_conditions(model, sp.csr_matrix(ctrl), conds, gene_ids=gene_ids, gene_names=names, pool_size=4,
                             seed=7, batch_size=3, device="cpu", progress=False)
    assert list(got.index) == conds and list(got.columns) == names
    assert got.attrs["unflagged"] == {"QQ+ctrl": ["QQ"]}
    flags = {"G1+ctrl": [1], "G2+G3": [2, 3], "ctrl": [], "QQ+ctrl": []}
    with torch.no_grad():
        for c in conds:
            preds = []
            for cell in control_pool(c, 9, pool_size=4, seed=7):
                f = torch.zeros(1, 6, dtype=torch.long)
                f[0, flags[c]] = 1
                preds.append(model(torch.from_numpy(gene_ids)[None], torch.from_numpy(ctrl[cell])[None], f)[0])
            np.testing.assert_allclose(got.loc[c].to_numpy(), torch.stack(preds).mean(0).numpy(), atol=1e-5)
    # a condition's pool does not depend on the other conditions asked for
    alone = predict_conditions(model, ctrl, ["G2+G3"], gene_ids=gene_ids, gene_names=names, pool_size=4, seed=7,
                               batch_size=8, device="cpu", progress=False)
    np.testing.assert_allclose(alone.loc["G2+G3"].to_numpy(), got.loc["G2+G3"].to_numpy(), atol=1e-5)
    with pytest.raises(InputError, match="twice"):
        predict_conditions(model, ctrl, ["ctrl", "ctrl"], gene_ids=gene_ids, gene_names=names, pool_size=2, seed=0)


def _perturbation_dataset(seed=0):
    """Controls and three single perturbations: the perturbed gene's value is the control value
    + 2 and one other gene moves by a condition-specific amount; a gene outside the vocabulary."""
    rng = np.random.default_rng(seed)
    genes = GENES[:8] + ["ZZ"]
    effects = {"ctrl": {}, "G1+ctrl": {1: 2.0, 5: 1.0}, "ctrl+G2": {2: 2.0, 6: -0.8}, "G3+ctrl": {3: 2.0, 0: 0.7},
               "G1+G2": {1: 2.0, 2: 2.0, 5: 1.0, 6: -0.8}}
    n = {"ctrl": 160, "G1+ctrl": 80, "ctrl+G2": 80, "G3+ctrl": 80, "G1+G2": 40}
    conds = np.concatenate([[c] * k for c, k in n.items()])
    base = rng.gamma(4.0, 0.3, size=len(genes))
    X = base + rng.normal(0, 0.3, size=(len(conds), len(genes)))
    for c, eff in effects.items():
        for g, d in eff.items():
            X[conds == c, g] += d
    X = np.clip(X, 0, None)
    obs = pd.DataFrame({"condition": conds}, index=[f"c{i}" for i in range(len(conds))])
    a = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=pd.DataFrame({"gene_name": genes}, index=genes))
    a.uns["cellmamba"] = {"x_kind": "other"}
    return a


def test_run_perturbation_learns_a_synthetic_effect(tmp_path):
    _, path = _saved(tmp_path, "bimamba_mamba2", "binned")
    a = _perturbation_dataset()
    cfg = PerturbConfig(epochs=8, lr=1e-2, batch_size=32, max_len=6, pool_size=20, backend="torch", seed=0)
    res = run_perturbation(a, path, VOCAB, train_conditions=["ctrl", "G1+ctrl", "ctrl+G2"],
                           valid_conditions=["G3+ctrl"], predict_conditions=["G1+ctrl", "ctrl+G2", "G1+G2", "ZZ+ctrl"],
                           config=cfg, out_dir=tmp_path / "run", device="cpu")
    assert (res.n_genes_used, res.n_genes_unmapped) == (8, 1)
    assert list(res.predictions.columns) == list(a.var_names)
    assert list(res.predictions.index) == ["G1+ctrl", "ctrl+G2", "G1+G2", "ZZ+ctrl"]
    assert res.unflagged == {"ZZ+ctrl": ["ZZ"]}
    assert res.train["n_train_pairs"] == 160 and res.train["n_valid_pairs"] == 80 and res.train["step"] == 40
    X = a.X.toarray()
    ctrl_mean = X[a.obs.condition == "ctrl"].mean(0)
    np.testing.assert_allclose(res.predictions["ZZ"], ctrl_mean[-1], rtol=1e-6)  # unmapped gene: no change
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics.loss.iloc[-1] < 0.5 * metrics.loss.iloc[0]
    valid = pd.read_csv(tmp_path / "run" / "eval_metrics.csv")
    assert len(valid) == cfg.epochs
    # the epoch of lowest validation loss predicts (keep_best)
    assert res.train["best_step"] == valid.step[valid.loss.idxmin()]
    assert res.train["best_valid_loss"] == pytest.approx(valid.loss.min())
    for c in ("G1+ctrl", "ctrl+G2"):
        truth = X[a.obs.condition == c].mean(0)[:8] - ctrl_mean[:8]
        pred = res.predictions.loc[c].to_numpy()[:8] - ctrl_mean[:8]
        assert np.corrcoef(truth, pred)[0, 1] > 0.8, (c, truth.round(2), pred.round(2))
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "perturbation.json").is_file()
    # the fine-tuned model reloads with identical outputs
    tuned = PerturbationModel.load(tmp_path / "run" / "model", backend="torch")
    again = predict_conditions(tuned, X[a.obs.condition == "ctrl"][:, :8], ["G1+ctrl"], gene_ids=np.arange(8) + N_SPECIAL,
                               gene_names=GENES[:8], pool_size=cfg.pool_size, seed=cfg.seed, device="cpu", progress=False)
    np.testing.assert_allclose(again.loc["G1+ctrl"].to_numpy(), res.predictions.loc["G1+ctrl"].to_numpy()[:8], atol=1e-5)
    # a second run in the same directory resumes from the final checkpoint: nothing left to train,
    # and the same best epoch predicts
    res2 = run_perturbation(a, path, VOCAB, train_conditions=["ctrl", "G1+ctrl", "ctrl+G2"], valid_conditions=["G3+ctrl"],
                            predict_conditions=["G1+ctrl"], config=cfg, out_dir=tmp_path / "run", device="cpu")
    assert res2.train["resumed_from"] is not None and res2.train["step"] == 40
    np.testing.assert_allclose(res2.predictions.loc["G1+ctrl"], res.predictions.loc["G1+ctrl"], atol=1e-5)


def test_run_perturbation_refuses_bad_datasets(tmp_path):
    _, path = _saved(tmp_path)
    a = _perturbation_dataset()
    cfg = PerturbConfig(epochs=1, backend="torch")
    kw = dict(valid_conditions=[], predict_conditions=["G1+ctrl"], config=cfg, out_dir=tmp_path / "r")
    counts = a.copy()
    counts.uns["cellmamba"] = {"x_kind": "counts"}
    with pytest.raises(InputError, match="expected 'log1p_norm' or 'other'"):
        run_perturbation(counts, path, VOCAB, train_conditions=["G1+ctrl"], **kw)
    counts.uns["cellmamba"] = {"x_kind": "other"}  # Norman's log1p at the median target
    counts.X = counts.X * 100
    with pytest.raises(InputError, match="expected log1p"):
        run_perturbation(counts, path, VOCAB, train_conditions=["G1+ctrl"], **kw)
    with pytest.raises(InputError, match="no 'condition' column"):
        run_perturbation(ad.AnnData(X=a.X, var=a.var), path, VOCAB, train_conditions=["G1+ctrl"], **kw)
    with pytest.raises(InputError, match="none of the 1 training conditions"):
        run_perturbation(a, path, VOCAB, train_conditions=["G7+ctrl"], **kw)
    bad = a.copy()
    bad.obs["condition"] = bad.obs["condition"].astype(str).replace("G1+G2", "G1+G2+G3")
    with pytest.raises(InputError, match="G1\\+G2\\+G3"):
        run_perturbation(bad, path, VOCAB, train_conditions=["G1+ctrl"], **kw)

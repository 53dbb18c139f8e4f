"""Fine-tuning tasks: gene matching to the vocabulary, dataset tokens against the tokenizers
called directly, gene selection, gradient reversal, loading a pretrained model with new heads,
and annotation / integration runs on tiny learnable data."""
from __future__ import annotations

import json
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellmamba.errors import InputError
from cellmamba.models import CellModel
from cellmamba.tasks import FinetuneConfig, run_annotation, run_integration, select_genes, tokenize_dataset
from cellmamba.tasks.finetune import grad_reverse, load_for_finetuning
from cellmamba.tasks.tokens import vocabulary_index
from cellmamba.tokenize import BinnedConfig, RankConfig, tokenize_binned, tokenize_rank
from cellmamba.train.pretrain import PretrainConfig, build_pretrain_model
from cellmamba.vocab import CLS_ID, N_SPECIAL

VOCAB = pd.DataFrame({"feature_id": [f"ENSG{i:011d}" for i in range(6)],
                      "feature_name": ["A", "B", "C", "D", "E", "F"],
                      "nonzero_median": [1.0, 2.0, 4.0, 1.0, 0.5, 3.0]})


def _dataset(counts, genes, *, kind="counts", obs=None):
    X = sp.csr_matrix(np.asarray(counts, dtype=np.float32))
    var = pd.DataFrame({"gene_name": genes}, index=genes)
    a = ad.AnnData(X=X, var=var, obs=obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]))
    a.uns["cellmamba"] = {"x_kind": "counts"}
    if kind == "log1p_norm":  # the same cells published only as log-normalised values
        tot = np.asarray(X.sum(1)).ravel()
        L = sp.diags(1e4 / tot) @ X
        L.data = np.log1p(L.data)
        a = ad.AnnData(X=sp.csr_matrix(L, dtype=np.float32), var=var, obs=a.obs)
        a.uns["cellmamba"] = {"x_kind": "log1p_norm"}
    return a


def test_vocabulary_index_by_symbol_and_by_versioned_id():
    var = pd.DataFrame({"gene_name": ["C", "ZZZ", "A"]}, index=["C", "ZZZ", "A"])
    assert vocabulary_index(var, VOCAB).tolist() == [2, -1, 0]
    var = pd.DataFrame({"gene_id": ["ENSG00000000004.3", "ENSG00000000001.1"], "gene_name": ["x", "y"]},
                       index=["x", "y"])
    assert vocabulary_index(var, VOCAB).tolist() == [4, 1]
    with pytest.raises(InputError, match="none of its 2 genes"):
        vocabulary_index(pd.DataFrame({"gene_id": ["ENSG99999999999", "ENSG99999999998"],
                                       "gene_name": ["p", "q"]}, index=["p", "q"]), VOCAB)


def test_binned_tokens_are_the_tokenizer_on_vocabulary_columns_and_equal_from_log_values():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(7, 4)).astype(np.float32)
    counts[0] = [0, 5, 0, 1]
    genes = ["F", "B", "QQ", "D"]  # QQ is not in the vocabulary
    toks = tokenize_dataset(_dataset(counts, genes), VOCAB, tokenizer="binned", max_len=10)
    # the reference: the tokenizer on a hand-placed (cells x vocabulary) matrix
    M = np.zeros((7, 6), np.float32)
    M[:, 5], M[:, 1], M[:, 3] = counts[:, 0], counts[:, 1], counts[:, 3]
    ref = tokenize_binned(sp.csr_matrix(M), BinnedConfig(max_len=10))
    np.testing.assert_array_equal(toks.batch.offsets, ref.offsets)
    np.testing.assert_array_equal(toks.batch.tokens, ref.tokens)
    np.testing.assert_array_equal(toks.batch.values, ref.values)
    assert toks.batch.cell(0)[0].tolist() == [CLS_ID, N_SPECIAL + 1, N_SPECIAL + 3]
    assert toks.measured.tolist() == [False, True, False, True, False, True]
    assert (toks.n_genes_used, toks.n_genes_unmapped, toks.value_source) == (3, 1, "counts")
    # per-cell quantile bins depend only on each cell's order of values: log-normalised input, same bins
    logs = tokenize_dataset(_dataset(counts, genes, kind="log1p_norm"), VOCAB, tokenizer="binned", max_len=10)
    assert logs.value_source == "log1p_norm"
    np.testing.assert_array_equal(logs.batch.tokens, ref.tokens)
    np.testing.assert_array_equal(logs.batch.values, ref.values)


def test_binned_tokens_use_the_models_number_of_bins():
    rng = np.random.default_rng(1)
    counts = rng.poisson(6.0, size=(9, 5)).astype(np.float32)
    genes = ["A", "B", "C", "D", "E"]
    toks = tokenize_dataset(_dataset(counts, genes), VOCAB, tokenizer="binned", max_len=10, n_bins=5)
    M = np.zeros((9, 6), np.float32)
    M[:, :5] = counts
    ref = tokenize_binned(sp.csr_matrix(M), BinnedConfig(max_len=10, n_bins=5))
    np.testing.assert_array_equal(toks.batch.values, ref.values)
    assert toks.batch.values.max() == 4  # bins 1..n_bins-1 for expressed genes
    default = tokenize_dataset(_dataset(counts, genes), VOCAB, tokenizer="binned", max_len=10)
    assert default.batch.values.max() > 4  # 51 bins: the five genes spread over more bins
    with pytest.raises(InputError, match="n_bins"):
        tokenize_dataset(_dataset(counts, genes), VOCAB, tokenizer="binned", max_len=10, n_bins=1)


def test_rank_tokens_from_counts_and_from_log_values_agree_and_use_all_genes_totals():
    counts = np.array([[5, 1, 7, 2], [1, 9, 3, 0]], np.float32)
    genes = ["A", "B", "C", "ZZ"]  # ZZ is outside the vocabulary but counts towards the total
    toks = tokenize_dataset(_dataset(counts, genes), VOCAB, tokenizer="rank", max_len=10)
    # hand computation, cell 0: totals 15; score = count / median: A 5/1, B 1/2, C 7/4
    assert toks.batch.cell(0)[0].tolist() == [N_SPECIAL + 0, N_SPECIAL + 2, N_SPECIAL + 1]
    M = np.zeros((2, 6), np.float32)
    M[:, 0], M[:, 1], M[:, 2] = counts[:, 0], counts[:, 1], counts[:, 2]
    ref = tokenize_rank(sp.csr_matrix(M), VOCAB["nonzero_median"].to_numpy(), RankConfig(max_len=10),
                        totals=counts.sum(1).astype(np.float64))
    np.testing.assert_array_equal(toks.batch.tokens, ref.tokens)
    logs = tokenize_dataset(_dataset(counts, genes, kind="log1p_norm"), VOCAB, tokenizer="rank", max_len=10)
    np.testing.assert_array_equal(logs.batch.tokens, ref.tokens)


def test_select_genes_count_filter_and_hvg_count():
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.uniform(0.05, 5, size=30), size=(200, 30)).astype(np.float32)
    counts[:, 0] = 0
    counts[:2, 0] = 1  # total 2 < 3: dropped by the count filter
    a = _dataset(counts, [f"G{i}" for i in range(30)])
    keep = select_genes(a, min_counts=3)
    assert not keep[0] and keep[1:].all() == (counts[:, 1:].sum(0) >= 3).all()
    hvg = select_genes(a, n_hvg=10, min_counts=3)
    assert hvg.sum() == 10 and not hvg[0]
    log_only = _dataset(counts, [f"G{i}" for i in range(30)], kind="log1p_norm")
    with pytest.raises(InputError, match="needs raw counts"):
        select_genes(log_only, min_counts=3)
    assert select_genes(log_only, n_hvg=10).sum() == 10


def test_grad_reverse_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(12.0).view(4, 3)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(12.0).view(4, 3))


def _pretrained(tmp_path, recipe="scmamba2", backbone="bimamba_mamba2"):
    torch.manual_seed(0)
    model = build_pretrain_model(PretrainConfig(recipe=recipe, backbone=backbone, d_model=32, n_layers=2,
                                                backend="torch"), n_genes=len(VOCAB))
    return model, model.save_pretrained(tmp_path / f"{recipe}_{backbone}")


def test_load_for_finetuning_keeps_backbone_weights_and_adds_fresh_heads(tmp_path):
    from cellmamba.models import HeadConfig

    model, path = _pretrained(tmp_path)
    tuned = load_for_finetuning(path, {"classifier": HeadConfig(kind="classifier", n_out=3)}, keep_heads=("value",),
                                backend="torch")
    ref, new = model.state_dict(), tuned.state_dict()
    for k, v in ref.items():
        assert torch.equal(new[k], v), k
    assert {k.split(".")[1] for k in new if k.startswith("heads.")} == {"value", "classifier"}
    with pytest.raises(InputError, match="no head"):
        load_for_finetuning(path, {}, keep_heads=("gene",), backend="torch")


def test_a_scratch_control_is_the_architecture_from_random_init_with_the_same_new_heads(tmp_path):
    """init="scratch": no saved weight is used; the embedding and backbone are what the seed draws
    for a fresh model of the saved config, and the new heads are those of the pretrained run."""
    from cellmamba._util import seed_all
    from cellmamba.models import HeadConfig

    model, path = _pretrained(tmp_path)
    heads = {"classifier": HeadConfig(kind="classifier", n_out=3)}
    tuned = load_for_finetuning(path, heads, backend="torch", seed=4).state_dict()
    scratch = load_for_finetuning(path, heads, backend="torch", seed=4, init="scratch").state_dict()
    assert set(scratch) == set(tuned)
    saved = model.state_dict()
    seed_all(4)
    fresh = CellModel(model.config).state_dict()  # the same draws: no other RNG use in between
    body = [k for k in saved if not k.startswith("heads.")]
    for k in body:
        assert torch.equal(scratch[k], fresh[k]), k
    drawn = [k for k in body if not torch.equal(fresh[k], saved[k])]  # not a constant init (norms, Mamba's A, D)
    assert "embed.gene.weight" in drawn and len(drawn) > len(body) / 2
    for k in (k for k in tuned if k.startswith("heads.classifier")):
        assert torch.equal(scratch[k], tuned[k]), k
    with pytest.raises(InputError, match="init must be one of"):
        load_for_finetuning(path, heads, backend="torch", init="random")
    with pytest.raises(InputError, match="init must be one of"):
        FinetuneConfig(init="none")


def _typed_cells(n=240, seed=0):
    """Three cell types, each expressing its own block of genes highly; two batches."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    lam = np.full((n, 6), 0.3)
    for t in range(3):
        lam[types == t, 2 * t:2 * t + 2] = 8.0
    counts = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"cell_type": np.array(["t0", "t1", "t2"])[types],
                        "batch": np.where(rng.random(n) < 0.5, "b0", "b1"),
                        "split": np.where(np.arange(n) < int(0.7 * n), "reference", "query")},
                       index=[f"c{i}" for i in range(n)])
    return _dataset(counts, list("ABCDEF"), obs=obs)


@pytest.mark.parametrize("recipe", ["scmamba2", "genemamba"])
def test_annotation_learns_a_separable_task(tmp_path, recipe):
    _, path = _pretrained(tmp_path, recipe)
    a = _typed_cells()
    cfg = FinetuneConfig(epochs=6, lr=3e-3, batch_size=16, max_len=8, backend="torch", dropout=0.0)
    pred = run_annotation(a, path, VOCAB, config=cfg, out_dir=tmp_path / "run")
    assert list(pred.columns) == ["cell", "split", "cell_type", "predicted"]
    assert (pred.cell == a.obs_names).all()
    q = pred[pred.split == "query"]
    assert (pred[pred.split == "reference"].predicted == "").all()
    assert (q.predicted == q.cell_type).mean() > 0.9
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # validation after every epoch; the epoch of lowest validation loss is the exported model
    valid = pd.read_csv(tmp_path / "run" / "eval_metrics.csv")
    n_ref = int((a.obs.split == "reference").sum())
    per_epoch = math.ceil((n_ref - round(0.1 * n_ref)) / cfg.batch_size)  # 10% of the reference validates
    assert list(valid.step) == [per_epoch * (e + 1) for e in range(cfg.epochs)]
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]
    assert provenance["exported_step"] == valid.step[valid.loss.idxmin()]


def test_integration_returns_one_finite_embedding_per_cell(tmp_path):
    _, path = _pretrained(tmp_path, "scmamba2")
    a = _typed_cells(n=64)
    cfg = FinetuneConfig(epochs=1, batch_size=16, max_len=8, backend="torch")
    emb = run_integration(a, path, VOCAB, config=cfg, out_dir=tmp_path / "run")
    assert emb.shape == (64, 32) and np.isfinite(emb).all()  # every cell, the held-out ones included
    # 6 of 64 cells validate (scGPT's test_size=0.1): 58 train cells, 4 steps per epoch, one evaluation per epoch
    valid = pd.read_csv(tmp_path / "run" / "eval_metrics.csv")
    assert list(valid.step) == [4]
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").samples.iloc[-1] == 58  # trained on the 58 only
    assert np.unique(emb.round(5), axis=0).shape[0] > 1


def test_micro_batches_keep_the_cells_per_step_and_the_steps_per_epoch():
    from cellmamba.tasks.perturb import PerturbConfig

    full = FinetuneConfig(epochs=2, batch_size=32).to_train_config(100, validate_epochs=True)
    micro = FinetuneConfig(epochs=2, batch_size=32, micro_batch_size=8).to_train_config(100, validate_epochs=True)
    assert (full.batch_size, full.grad_accum) == (32, 1)
    assert (micro.batch_size, micro.grad_accum) == (8, 4)  # 4 passes of 8 cells = 32 cells per step
    assert micro.max_steps == full.max_steps == 2 * math.ceil(100 / 32) and micro.eval_every == full.eval_every == 4
    # fewer cells than a batch: one pass of them all
    small = FinetuneConfig(epochs=1, batch_size=32, micro_batch_size=16).to_train_config(10)
    assert (small.batch_size, small.grad_accum, small.max_steps) == (10, 1, 1)
    for cls in (FinetuneConfig, PerturbConfig):
        with pytest.raises(InputError, match="micro_batch_size must be None or an integer >= 1 that divides batch_size"):
            cls(batch_size=32, micro_batch_size=5)
        with pytest.raises(InputError, match="micro_batch_size"):
            cls(batch_size=32, micro_batch_size=0)


def test_integration_in_micro_batches_trains_the_same_cells_per_step(tmp_path):
    _, path = _pretrained(tmp_path, "scmamba2")
    a = _typed_cells(n=64)
    cfg = FinetuneConfig(epochs=1, batch_size=16, micro_batch_size=8, max_len=8, backend="torch")
    emb = run_integration(a, path, VOCAB, config=cfg, out_dir=tmp_path / "run")
    assert emb.shape == (64, 32) and np.isfinite(emb).all()
    valid = pd.read_csv(tmp_path / "run" / "eval_metrics.csv")
    assert list(valid.step) == [4]  # 58 train cells, 16 per step: the same 4 steps as without micro-batches
    train = json.loads((tmp_path / "run" / "provenance.json").read_text())["config"]["train"]
    assert (train["batch_size"], train["grad_accum"]) == (8, 2)
    assert pd.read_csv(tmp_path / "run" / "metrics.csv").samples.iloc[-1] == 58  # each training cell once, as in one batch

"""scmamba multi-omics task: genomic order of genes and peaks against hand-made cases, values
against the formulas written out, patches against a per-cell loop, training of the three
towers on paired data with a shared latent state (loss falls, FOSCTTM far below chance and
below the untrained towers'), last-token pooling, the same-size Transformer, save -> load,
and the input errors."""
from __future__ import annotations

import csv
import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellmamba.errors import InputError
from cellmamba.metrics.foscttm import foscttm
from cellmamba.models.heads import pool_cells
from cellmamba.models.two_tower import TwoTowerModel
from cellmamba.tasks.multiomics import (MultiomicsConfig, build_two_tower, embed_modalities, prepare_modalities,
                                        run_multiomics)
from cellmamba.tokenize.patch import peak_order

TINY = dict(d_model=16, n_layers=2, d_state=8, patch_size=16, d_out=8, backend="torch", embed_batch_size=64)


def _positions(ids, chroms, starts):
    return pd.DataFrame({"ensembl_id": list(ids), "chromosome": list(chroms), "start": np.asarray(starts, np.int64)})


def _adata(blocks: dict[str, tuple[np.ndarray, list[str]]], *, gene_ids=None, counts=True):
    """AnnData with var ``modality``: blocks = {modality: (counts (n, f), var names)}."""
    mats, names, mods = [], [], []
    for m, (X, var_names) in blocks.items():
        mats.append(np.asarray(X, np.float32))
        names += list(var_names)
        mods += [m] * len(var_names)
    X = sp.csr_matrix(np.hstack(mats))
    var = pd.DataFrame({"modality": mods}, index=names)
    if gene_ids is not None:
        var["gene_id"] = list(gene_ids) + [""] * (len(names) - len(gene_ids))
    a = ad.AnnData(X=X.copy(), var=var)
    if counts:
        a.layers["counts"] = X
    return a


def _paired(n=128, n_genes=60, n_peaks=150, seed=0):
    """Paired rna + atac counts driven by one latent cell state (4 clusters + a continuous shift)."""
    rng = np.random.default_rng(seed)
    k = 4
    z = np.eye(k)[rng.integers(0, k, n)] * 2.0 + rng.normal(scale=0.5, size=(n, k))
    Wr, Wa = rng.normal(size=(k, n_genes)), rng.normal(size=(k, n_peaks))
    rna = rng.poisson(np.exp(0.6 * z @ Wr - 0.5))
    atac = rng.poisson(np.exp(0.6 * z @ Wa - 1.0))
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    pos = _positions(ids, rng.choice(["1", "2", "X"], n_genes), rng.integers(0, 10**6, n_genes))
    peaks = [f"chr{c}-{s}-{s + 400}" for c, s in zip(rng.choice(["1", "5", "12"], n_peaks),
                                                      rng.integers(0, 10**7, n_peaks))]
    a = _adata({"atac": (atac, peaks), "rna": (rna, [f"G{i}" for i in range(n_genes)])})
    a.var["gene_id"] = [""] * n_peaks + ids
    return a, pos


def _log_norm(X):
    X = np.asarray(X, np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


# ---------------------------------------------------------------------------------------------
# order and values
# ---------------------------------------------------------------------------------------------
def test_peaks_sorted_by_natural_chromosome_order_then_start():
    names = ["chr2-50-60", "chrX:10-20", "chr1-300-400", "chr10-5-9", "chr1-100-200", "chrY-1-2",
             "GL000194.1-5-10", "chr2-10-20", "chrM-3-4"]
    # by hand: chr1 (100, 300), chr2 (10, 50), chr10 (not between 1 and 2), X, Y, MT, other contigs
    expected = ["chr1-100-200", "chr1-300-400", "chr2-10-20", "chr2-50-60", "chr10-5-9", "chrX:10-20",
                "chrY-1-2", "chrM-3-4", "GL000194.1-5-10"]
    assert [names[i] for i in peak_order(names)] == expected


def test_genes_in_genomic_order_and_unplaced_genes_dropped_or_appended():
    ids = ["ENSG3", "ENSG1", "ENSG9", "ENSG2", "ENSG4.7"]  # ENSG9 has no position; versions are ignored
    pos = _positions(["ENSG1", "ENSG2", "ENSG3", "ENSG4"], ["X", "2", "2", "1"], [5, 900, 100, 50])
    rng = np.random.default_rng(1)
    rna = rng.poisson(3.0, size=(6, 5))
    prot = rng.poisson(4.0, size=(6, 3))
    a = _adata({"rna": (rna, ["a", "b", "c", "d", "e"]), "protein": (prot, ["p1", "p2", "p3"])}, gene_ids=ids)
    cfg = MultiomicsConfig(**TINY)
    data = prepare_modalities(a, pos, config=cfg)
    assert list(data) == ["rna", "protein"]
    # by hand: ENSG4 chr1:50 (e), ENSG3 chr2:100 (a), ENSG2 chr2:900 (d), ENSG1 chrX:5 (b); ENSG9 (c) dropped
    assert data["rna"].features == ["e", "a", "d", "b"]
    assert data["rna"].n_unplaced == 1
    # normalised over ALL the cell's genes (the dropped one included), then reordered
    np.testing.assert_allclose(data["rna"].matrix.toarray(), _log_norm(rna)[:, [4, 0, 3, 1]], rtol=1e-5)
    appended = prepare_modalities(a, pos, config=dataclasses.replace(cfg, unplaced="append"))
    assert appended["rna"].features == ["e", "a", "d", "b", "c"]
    # protein: file order, CLR per cell: log1p(x / exp(mean_j log1p(x_j)))
    assert data["protein"].features == ["p1", "p2", "p3"]
    geo = np.exp(np.log1p(prot).mean(1, keepdims=True))
    np.testing.assert_allclose(data["protein"].matrix.toarray(), np.log1p(prot / geo), rtol=1e-5)


def test_max_features_keeps_the_most_variable_in_genomic_order():
    X = np.zeros((4, 4))
    X[:, 0] = [1, 1, 1, 1]   # constant counts, but not a constant share of the cell
    X[:, 1] = [0, 50, 0, 50]
    X[:, 2] = [3, 3, 3, 3]
    X[:, 3] = [0, 0, 40, 0]
    peaks = ["chr3-1-2", "chr2-1-2", "chr1-5-6", "chr1-1-2"]
    prot = np.ones((4, 2))
    a = _adata({"atac": (X, peaks), "protein": (prot, ["p", "q"])})
    data = prepare_modalities(a, config=MultiomicsConfig(**TINY, max_features=2))
    L = _log_norm(X)
    top = set(np.argsort(-L.var(0))[:2])
    assert data["atac"].features == [p for p in ["chr1-1-2", "chr1-5-6", "chr2-1-2", "chr3-1-2"]
                                     if peaks.index(p) in top]


def test_patches_equal_a_per_cell_loop():
    rng = np.random.default_rng(2)
    X = rng.poisson(0.7, size=(9, 37))  # 37 features, patch 16: 3 patches, the last zero-padded
    peaks = [f"chr{1 + i % 3}-{1000 - i}-{1100 - i}" for i in range(37)]
    a = _adata({"atac": (X, peaks), "protein": (rng.poisson(2.0, size=(9, 5)), list("abcde"))})
    d = prepare_modalities(a, config=MultiomicsConfig(**TINY))["atac"]
    assert (d.n_features, d.n_patches) == (37, 3)
    rows = np.array([4, 0, 8, 4])
    got = d.patches(rows)
    order = peak_order(peaks)
    L = _log_norm(X)
    for b, r in enumerate(rows):
        ref = np.zeros((3, 16), np.float32)
        for f, col in enumerate(order):
            ref[f // 16, f % 16] = L[r, col]
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _loss_rows(path):
    with open(path) as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize("arch", ["mamba2", "bimamba_mamba2", "transformer"])
def test_each_arch_learns_the_shared_cell_state(arch, tmp_path):
    torch.set_num_threads(1)
    a, pos = _paired()
    cfg = MultiomicsConfig(arch=arch, **TINY, epochs=20, batch_size=32, lr=3e-3, seed=0)
    data = prepare_modalities(a, pos, config=cfg)
    untrained = embed_modalities(build_two_tower(data, cfg), data, progress=False)
    res = run_multiomics(a, config=cfg, out_dir=tmp_path, positions=pos, device="cpu")
    assert res.modalities == ("rna", "atac")
    assert res.n_patches == {"rna": 4, "atac": 10} and res.n_features == {"rna": 60, "atac": 150}
    assert res.pooling == ("last" if arch == "mamba2" else "mean")
    for m in res.modalities:
        e = res.embeddings[m]
        assert e.shape == (128, 8) and e.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    losses = _loss_rows(tmp_path / "metrics.csv")
    # falls, and ends well below chance (InfoNCE of unrelated pairs: log(batch size) + the cosine term)
    assert losses[-1] < losses[0] - 0.8 and losses[-1] < np.log(32) - 0.5, losses
    before = foscttm(untrained["rna"], untrained["atac"])
    after = foscttm(res.embeddings["rna"], res.embeddings["atac"])
    assert after < 0.25 and after < before - 0.2, (before, after)
    assert (tmp_path / "model" / "rna" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "two_tower.json").is_file()


def test_unidirectional_tower_pools_the_last_patch_which_sees_the_first():
    a, pos = _paired(n=8)
    cfg = MultiomicsConfig(arch="mamba2", **TINY)
    data = prepare_modalities(a, pos, config=cfg)
    model = build_two_tower(data, cfg).eval()
    tower = model.towers["atac"]
    assert tower.config.heads["projection"].pooling == "last"
    x = torch.from_numpy(data["atac"].patches(np.arange(4)))
    with torch.no_grad():
        out = tower(x)
        z = tower.heads["projection"](out)
        # the head reads the state at the last patch (all patches are real)
        np.testing.assert_allclose(z.numpy(), tower.heads["projection"].mlp(out.hidden[:, -1]).numpy(), rtol=1e-6)
        np.testing.assert_allclose(pool_cells(out, "last").numpy(), out.hidden[:, x.shape[1] - 1].numpy())
        x2 = x.clone()
        x2[1, 0] += 10.0  # change only the first patch of cell 1
        z2 = tower.heads["projection"](tower(x2))
    # the first patch reaches the last state through the recurrence (decayed, untrained: ~1e-4)
    assert float((z2[1] - z[1]).abs().max()) > 1e-6
    torch.testing.assert_close(z[[0, 2, 3]], z2[[0, 2, 3]], rtol=0, atol=0)


def test_transformer_tower_has_the_mamba2_towers_size():
    a, pos = _paired(n=8)
    for d_model in (16, 32):
        cfg = MultiomicsConfig(**{**TINY, "d_model": d_model})
        data = prepare_modalities(a, pos, config=cfg)
        mamba = build_two_tower(data, cfg)
        trans = build_two_tower(data, dataclasses.replace(cfg, arch="transformer"))
        assert trans.towers["rna"].config.backbone.arch == "transformer"
        assert trans.towers["rna"].config.backbone.d_model == d_model
        assert trans.towers["rna"].config.backbone.n_layers == cfg.n_layers
        for m in ("rna", "atac"):
            pm = sum(p.numel() for p in mamba.towers[m].parameters())
            pt = sum(p.numel() for p in trans.towers[m].parameters())
            assert abs(pt - pm) <= 0.10 * pm, (m, pm, pt)


def test_save_load_gives_identical_embeddings(tmp_path):
    a, pos = _paired(n=20)
    cfg = MultiomicsConfig(arch="mamba2", **TINY)
    data = prepare_modalities(a, pos, config=cfg)
    model = build_two_tower(data, cfg)
    with torch.no_grad():  # move away from the initialisation so a fresh model would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = embed_modalities(model, data, progress=False)
    model.save_pretrained(tmp_path / "model")
    loaded = TwoTowerModel.from_pretrained(tmp_path / "model")
    assert loaded.modalities == ("rna", "atac") and loaded.features == model.features
    # the saved feature order rebuilds the same inputs from the AnnData
    again = prepare_modalities(a, config=cfg, features=loaded.features)
    after = embed_modalities(loaded, again, progress=False)
    for m in ("rna", "atac"):
        np.testing.assert_array_equal(after[m], before[m])
    fresh = embed_modalities(build_two_tower(data, dataclasses.replace(cfg, seed=1)), data, progress=False)
    assert not np.allclose(fresh["rna"], before["rna"])


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_input_errors(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.poisson(2.0, size=(5, 4))
    cfg = MultiomicsConfig(**TINY)
    one = _adata({"atac": (X, ["chr1-1-2", "chr1-3-4", "chr1-5-6", "chr1-7-8"])})
    with pytest.raises(InputError, match="exactly two modalities"):
        run_multiomics(one, config=cfg, out_dir=tmp_path)
    three = _adata({"atac": (X, ["chr1-1-2", "chr1-3-4", "chr1-5-6", "chr1-7-8"]), "protein": (X, list("abcd")),
                    "rna": (X, list("efgh"))})
    with pytest.raises(InputError, match="exactly two modalities"):
        prepare_modalities(three, config=cfg)
    no_counts = _adata({"atac": (X, ["chr1-1-2", "chr1-3-4", "chr1-5-6", "chr1-7-8"]), "protein": (X, list("abcd"))},
                       counts=False)
    with pytest.raises(InputError, match="'counts'"):
        run_multiomics(no_counts, config=cfg, out_dir=tmp_path)
    bad = _adata({"atac": (X, ["chr1-1-2", "chr1_3_4", "chr1-5-6", "chr1-9-8"]), "protein": (X, list("abcd"))})
    with pytest.raises(InputError, match=r"2 of 4 peak names.*'chr1_3_4'"):
        prepare_modalities(bad, config=cfg)
    rna = _adata({"rna": (X, list("abcd")), "protein": (X, list("efgh"))})
    with pytest.raises(InputError, match="gene_id"):
        prepare_modalities(rna, _positions(["ENSG1"], ["1"], [1]), config=cfg)
    with pytest.raises(InputError, match="unknown keys.*'depth'"):
        MultiomicsConfig.from_dict({"arch": "mamba2", "depth": 3})
    with pytest.raises(InputError, match="arch"):
        MultiomicsConfig.from_dict({"arch": "mamba1"})
    with pytest.raises(InputError, match="patch_size"):
        MultiomicsConfig(patch_size=0)
    assert MultiomicsConfig.from_dict({"arch": "transformer", "epochs": 2}) == MultiomicsConfig(arch="transformer",
                                                                                                epochs=2)


@pytest.mark.parametrize("arch", ["mamba2", "bimamba_mamba2", "transformer"])
def test_micro_batches_give_the_whole_batchs_infonce_gradient(arch):
    """Towers encoded in recomputed chunks of 3 cells (micro_batch_size): the same loss and the same
    gradient as one pass over the 8 cells, whose InfoNCE contrasts all 8 (negatives across chunks)."""
    from cellmamba.models.two_tower import HEAD
    from cellmamba.tasks.multiomics import _batch as two_tower_batch
    from cellmamba.train.objectives import ContrastiveConfig, ContrastiveObjective

    torch.manual_seed(0)
    a, pos = _paired(n=8)
    cfg = MultiomicsConfig(arch=arch, **TINY, batch_size=8)
    data = prepare_modalities(a, pos, config=cfg)
    model = build_two_tower(data, cfg).eval()  # eval: no dropout masks to differ between the passes
    batch = two_tower_batch(data, np.arange(8))
    grads, calls = [], []
    sizes: list[int] = []
    hook = model.towers["rna"].register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    for chunk in (None, 3):
        objective = ContrastiveObjective(ContrastiveConfig(modalities=tuple(data), head=HEAD, chunk_cells=chunk))
        model.zero_grad(set_to_none=True)
        sizes.clear()
        loss, _ = objective(model, batch)
        loss.backward()
        calls.append(list(sizes))
        grads.append((float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                                              if p.grad is not None}))
    hook.remove()
    assert calls == [[8], [3, 3, 2, 2, 3, 3]]  # one pass; three chunks, recomputed in the backward (last first)
    (l_full, g_full), (l_chunk, g_chunk) = grads
    assert l_chunk == pytest.approx(l_full, rel=1e-6)
    assert g_full.keys() == g_chunk.keys() and len(g_full) > 10
    for name in g_full:
        torch.testing.assert_close(g_chunk[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(InputError, match="micro_batch_size"):
        MultiomicsConfig(micro_batch_size=0)

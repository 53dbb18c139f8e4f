"""scib integration metrics and the LISI helper, on hand-built embeddings with known answers.

Cell types sit on orthogonal unit directions (L2 normalisation keeps them there), with small
noise, so every kNN neighbourhood stays inside its group.
"""
from __future__ import annotations

import dataclasses
import runpy
import shutil
import types

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("scib")
import anndata as ad  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from cellmamba.errors import InputError  # noqa: E402
from cellmamba.metrics import SCIB, Scores, score_integration  # noqa: E402
from cellmamba.metrics import _lisi_build  # noqa: E402
from cellmamba.metrics import integration as integ  # noqa: E402

FAST = dataclasses.replace(SCIB, lisi_k0=30)
N = 20   # cells per (cell type, batch) group


def _adata(groups, *, noise=0.02, dims=8, seed=0):
    """groups: list of (cell_type, batch, direction index); N cells each around that unit vector."""
    rng = np.random.default_rng(seed)
    emb, ct, bt = [], [], []
    for cell_type, batch, direction in groups:
        centre = np.zeros(dims)
        centre[direction] = 1.0
        emb.append(centre + rng.normal(scale=noise, size=(N, dims)))
        ct += [cell_type] * N
        bt += [batch] * N
    obs = pd.DataFrame({"cell_type": ct, "batch": bt}, index=[f"c{i}" for i in range(len(ct))])
    return ad.AnnData(obs=obs, obsm={"X_emb": np.vstack(emb)})


@pytest.fixture(scope="module")
def mixed():
    # A, B, C each in both batches at the SAME place (batches mixed); D only in b1 (isolated label)
    return _adata([("A", "b1", 0), ("A", "b2", 0), ("B", "b1", 1), ("B", "b2", 1),
                   ("C", "b1", 2), ("C", "b2", 2), ("D", "b1", 3)])


@pytest.fixture(scope="module")
def mixed_scores(mixed):
    rng = np.random.default_rng(3)
    # unintegrated expression: batch b2 shifted by +5 on 30 genes (a dominant batch effect)
    X = rng.normal(size=(mixed.n_obs, 30)) + 5.0 * (mixed.obs["batch"].to_numpy() == "b2")[:, None]
    un = ad.AnnData(X=X.astype(np.float32), obs=mixed.obs.copy())
    return score_integration(mixed, "X_emb", unintegrated=un, settings=FAST, seed=0)


def test_perfectly_separated_cell_types_mixed_batches(mixed_scores):
    s = mixed_scores
    assert list(s) == list(integ.INTEGRATION_METRICS) and isinstance(s, Scores)
    # Leiden finds the 4 disconnected groups exactly
    assert s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)
    # silhouette: within-group distance ~0.02*sqrt(2*8)=0.08 vs sqrt(2) between -> s ~0.94, scaled ~0.97
    assert s["asw_cell"] > 0.95
    assert s["graph_connectivity"] == 1.0             # each cell type one connected component
    assert s["clisi"] == pytest.approx(1.0)           # neighbourhoods hold a single cell type
    # batches drawn from the same distribution inside each type: |batch silhouette| small, LISI ~2
    assert s["asw_batch"] > 0.85 and s["ilisi"] > 0.7
    assert s["isolated_label_f1"] == pytest.approx(1.0)   # D is its own Leiden cluster
    assert s["isolated_label_asw"] > 0.95
    # the embedding carries none of the unintegrated data's batch variance
    assert s["pcr"] > 0.9
    assert s["avg_bio"] == pytest.approx(np.mean([s["ari"], s["nmi"], s["asw_cell"]]))
    assert s["avg_batch"] == pytest.approx(np.mean([s["asw_batch"], s["graph_connectivity"]]))
    assert "kbet" not in s  # no env of the workflow has R: no column that can never be filled


def test_perfectly_separated_batches():
    # every cell type split by batch onto two orthogonal directions: no mixing at all
    a = _adata([("A", "b1", 0), ("A", "b2", 1), ("B", "b1", 2), ("B", "b2", 3)])
    s = score_integration(a, "X_emb", settings=FAST, lisi=True)
    # within a type the batches are sqrt(2) apart, cells ~0.08 from their own batch:
    # silhouette ~ 1 - 0.08/1.41 ~ 0.94 -> scaled 1 - |s| ~ 0.06 (0 would need zero spread)
    assert s["asw_batch"] < 0.1
    # each type = two equal disconnected components: largest holds half
    assert s["graph_connectivity"] == pytest.approx(0.5)
    assert s["ilisi"] == pytest.approx(0.0)           # every neighbourhood is a single batch
    assert np.isnan(s["pcr"]) and s.notes["pcr"] == "no unintegrated data given"
    assert np.isnan(s["isolated_label_f1"])           # every type is in every batch


def test_pcr_of_the_unintegrated_data_itself_is_zero(mixed):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(mixed.n_obs, 12)) + 3.0 * (mixed.obs["batch"].to_numpy() == "b2")[:, None]
    a = mixed.copy()
    a.obsm["X_emb"] = X
    un = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=mixed.obs.copy())
    s = score_integration(a, "X_emb", unintegrated=un, settings=FAST, normalize=False, lisi=False)
    assert s["pcr"] == pytest.approx(0.0, abs=1e-3)   # same variance explained by batch before and after


def test_lisi_matches_scib_and_l2_normalisation(mixed):
    work = integ._scoring_copy(mixed, "X_emb", label_key="cell_type", batch_key="batch", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(work.obsm["X_emb"], axis=1), 1.0, rtol=1e-6)
    integ._neighbors(work, settings=FAST, seed=0)
    if not _lisi_build.binary_works(_lisi_build.scib_binary_path()):
        pytest.skip("scib's own LISI helper does not run here; run python -m cellmamba.metrics._lisi_build")
    import scib

    ours = integ._ilisi_from_graph(work, "batch", k0=30)
    theirs = scib.metrics.ilisi_graph(work.copy(), batch_key="batch", type_="knn", k0=30, subsample=None)
    assert ours == pytest.approx(theirs)
    assert integ._clisi_from_graph(work, "cell_type", k0=30) == pytest.approx(
        scib.metrics.clisi_graph(work.copy(), label_key="cell_type", type_="knn", k0=30, subsample=None))
    assert integ.ilisi(mixed, "X_emb", k0=30) > 0.7 and integ.clisi(mixed, "X_emb", k0=30) == pytest.approx(1.0)


def test_input_errors(mixed):
    with pytest.raises(InputError, match="obsm\\['nope'\\]"):
        score_integration(mixed, "nope")
    with pytest.raises(InputError, match="obs\\['celltype'\\]"):
        score_integration(mixed, "X_emb", label_key="celltype")
    bad = mixed.copy()
    bad.obsm["X_emb"][0] = 0.0
    with pytest.raises(InputError, match="all-zero"):
        score_integration(bad, "X_emb")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build scib's LISI helper")
def test_lisi_build_into_cache_when_scib_is_read_only(tmp_path, monkeypatch):
    fake = tmp_path / "scib_ro" / "knn_graph" / "knn_graph.o"
    fake.parent.mkdir(parents=True)
    fake.write_text("not a binary")
    monkeypatch.setattr(_lisi_build, "scib_binary_path", lambda: fake)
    monkeypatch.setenv("CELLMAMBA_CACHE", str(tmp_path / "cache"))
    real_access = _lisi_build.os.access
    monkeypatch.setattr(_lisi_build.os, "access",
                        lambda p, mode: False if str(p) == str(fake.parent) else real_access(p, mode))
    built = _lisi_build.build_lisi_binary()
    assert built == _lisi_build.cache_binary_path() and str(built).startswith(str(tmp_path / "cache"))
    assert _lisi_build.binary_works(built)
    mtime = built.stat().st_mtime_ns
    assert _lisi_build.build_lisi_binary() == built and built.stat().st_mtime_ns == mtime   # idempotent


def test_lisi_build_without_compiler_says_so(tmp_path, monkeypatch):
    fake = tmp_path / "knn_graph" / "knn_graph.o"
    monkeypatch.setattr(_lisi_build, "scib_binary_path", lambda: fake)
    monkeypatch.setenv("CELLMAMBA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(_lisi_build.LisiBuildError, match="no C\\+\\+ compiler"):
        _lisi_build.build_lisi_binary()


class _Named(types.SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)

    def __iter__(self):
        return iter(self.__dict__.values())


def test_score_integration_workflow_script(tmp_path, repo_root, mixed):
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(mixed.n_obs, 25)).astype(np.float32))
    data = ad.AnnData(X=counts, obs=mixed.obs.copy(),
                      var=pd.DataFrame({"gene_name": [f"G{i}" for i in range(25)]}, index=[f"g{i}" for i in range(25)]))
    data.uns["cellmamba"] = {"x_kind": "counts"}
    data.write_h5ad(tmp_path / "data.h5ad")
    emb = ad.AnnData(obs=mixed.obs[[]].iloc[::-1].copy(), obsm={"X_emb": mixed.obsm["X_emb"][::-1].copy()})
    emb.write_h5ad(tmp_path / "emb.h5ad")
    smk = types.SimpleNamespace(scriptdir=str(repo_root / "workflow_scripts"),
        input=_Named(dataset=str(tmp_path / "data.h5ad"), embedding=str(tmp_path / "emb.h5ad")),
        output=_Named(metrics=str(tmp_path / "m.csv")), log=[str(tmp_path / "log.txt")],
        params=_Named(dataset="toy", method="pca", seed=2, extra={"variant": "all_genes", "simulated": True}))
    runpy.run_path(str(repo_root / "workflow_scripts" / "score_integration.py"), init_globals={"snakemake": smk})
    m = pd.read_csv(tmp_path / "m.csv")
    assert list(m.columns) == ["task", "dataset", "method", "seed", "metric", "value", "variant", "simulated", "note"]
    assert set(m["metric"]) == set(integ.INTEGRATION_METRICS) and (m["seed"] == 2).all()
    v = m.set_index("metric")["value"]
    assert v["nmi"] == pytest.approx(1.0) and np.isfinite(v["pcr"])   # reordered cells aligned


def test_annotation_and_table_workflow_scripts(tmp_path, repo_root):
    pd.DataFrame({"cell": list("pqrstuvw"), "split": ["reference"] * 3 + ["query"] * 5,
                  "cell_type": ["a", "b", "NA", "a", "a", "b", "b", "c"],
                  "predicted": ["", "", "", "a", "b", "b", "b", "a"]}).to_csv(tmp_path / "pred.csv", index=False)
    outs = []
    for seed in (0, 1):
        smk = types.SimpleNamespace(scriptdir=str(repo_root / "workflow_scripts"),
            input=_Named(predictions=str(tmp_path / "pred.csv")),
            output=_Named(metrics=str(tmp_path / f"m{seed}.csv"), confusion=str(tmp_path / f"c{seed}.csv")),
            log=[str(tmp_path / "log.txt")],
            params=_Named(dataset="ms", method="logreg", seed=seed, extra={"variant": "protocol", "simulated": False}))
        runpy.run_path(str(repo_root / "workflow_scripts" / "score_annotation.py"), init_globals={"snakemake": smk})
        outs.append(str(tmp_path / f"m{seed}.csv"))
    m = pd.read_csv(outs[0]).set_index("metric")
    assert m.loc["accuracy", "value"] == pytest.approx(0.6) and m.loc["n_query_only_classes", "value"] == 1
    cm = pd.read_csv(tmp_path / "c0.csv", index_col=0)
    assert cm.loc["a", "b"] == 1 and cm.loc["c", "a"] == 1
    smk = types.SimpleNamespace(scriptdir=str(repo_root / "workflow_scripts"),
                                input=_Named(a=outs[0], b=outs[1]),
                                output=_Named(csv=str(tmp_path / "t.csv"), md=str(tmp_path / "t.md")),
                                log=[str(tmp_path / "log2.txt")], params=_Named(task="annotation", title="Annotation"))
    runpy.run_path(str(repo_root / "workflow_scripts" / "make_table.py"), init_globals={"snakemake": smk})
    t = pd.read_csv(tmp_path / "t.csv").set_index("metric")
    assert t.loc["accuracy", "mean"] == pytest.approx(0.6) and t.loc["accuracy", "n_seeds"] == 2
    assert "| logreg | protocol | 2 | 0.600 ± 0.000 |"   # one row: nothing to bold in (tmp_path / "t.md").read_text()

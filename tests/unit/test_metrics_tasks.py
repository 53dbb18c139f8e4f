"""Issue 6's metric plumbing: reverse-perturbation top-k (hand-computed), the perturbation
table's long frame and rendering, profile / paired-embedding files, cluster agreement and the
multi-omics scoring of a paired-embedding file."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cellmamba.baselines import prediction_targets
from cellmamba.errors import InputError
from cellmamba.io import read_paired_embedding, read_profiles, write_paired_embedding, write_profiles
from cellmamba.metrics import (Scores, cluster_agreement, perturbation_frame, reverse_perturbation_topk,
                               score_paired_embedding_file, summarize)
from cellmamba.metrics.tables import render_markdown


def _frame(rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows.values()), index=list(rows), columns=["g1", "g2"], dtype=float)


CANDIDATES = _frame({"A+ctrl": [1, 0], "B+ctrl": [0, 1], "A+B": [1, 1], "C+ctrl": [5, 5], "A+C": [3, 3]})


def test_reverse_topk_matches_a_hand_computed_ranking():
    # query B+A at (0.9, 0.2): distances A 0.224, A+B 0.806, B 1.204, A+C 3.25, C 6.4 -> truth (A+B) ranks 2nd
    # query C+A at (1, 0.1): A 0.1, A+B 0.9, B 1.345, A+C 3.6, C 6.3 -> truth (A+C) ranks 4th
    observed = _frame({"B+A": [0.9, 0.2], "C+A": [1.0, 0.1]})
    got = reverse_perturbation_topk(observed, CANDIDATES, ks=(1, 2, 3, 4, 5))
    assert got["exact"].tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    # the nearest candidate (A+ctrl) shares gene A with both queries
    assert got["partial"].tolist() == [1.0] * 5


def test_reverse_topk_constant_predictions_never_hit_before_k_covers_all():
    flat = pd.DataFrame(np.ones((5, 2)), index=CANDIDATES.index, columns=["g1", "g2"])
    got = reverse_perturbation_topk(_frame({"A+B": [0.3, 2.0]}), flat, ks=(1, 4, 5))
    assert got["exact"].tolist() == [0.0, 0.0, 1.0]
    assert got["partial"].tolist() == [0.0, 0.0, 1.0]


def test_reverse_topk_refuses_queries_outside_the_candidates():
    with pytest.raises(InputError, match="not among"):
        reverse_perturbation_topk(_frame({"D+E": [0, 0]}), CANDIDATES)
    twice = pd.concat([CANDIDATES, _frame({"B+A": [0, 0]})])
    with pytest.raises(InputError, match="same genes"):
        reverse_perturbation_topk(_frame({"A+B": [0, 0]}), twice)


def test_prediction_targets_are_test_conditions_then_new_candidates():
    split = SimpleNamespace(test=["ctrl", "X+ctrl", "ctrl+B", "B+A"],
                            reverse_candidates=["A+ctrl", "B+ctrl", "A+B", "A+C"])
    conditions, roles = prediction_targets(split)
    # B+ctrl is ctrl+B and A+B is B+A: predicted once, under the data's spelling
    assert conditions == ["X+ctrl", "ctrl+B", "B+A", "A+ctrl", "A+C"]
    assert roles == ["test"] * 3 + ["reverse_candidate"] * 2


def test_perturbation_frame_and_table_show_each_sections_own_flags():
    summary = {"all": Scores({"pearson_delta": 0.5, "n_conditions": 3.0}),
               "combo_seen0": Scores({"pearson_delta": 0.2, "n_conditions": 1.0})}
    reverse = pd.DataFrame({"exact": [0.0, 0.5], "partial": [0.5, 1.0]}, index=pd.Index([1, 2], name="k"))
    reverse.attrs["n_queries"] = 2
    frames = [perturbation_frame(summary, reverse, dataset="d", method=m, seed=s, extra={"simulated": True})
              for m in ("additive", "scmamba2") for s in (0, 1)]
    long = pd.concat(frames)
    assert set(long["task"]) == {"perturbation", "reverse_perturbation"}
    rev = long[long["task"] == "reverse_perturbation"]
    assert set(rev["match"]) == {"2/2 genes", ">=1/2 genes"} and rev["subgroup"].isna().all()
    row = rev[(rev["match"] == "2/2 genes") & (rev["metric"] == "top2")]
    assert row["value"].tolist() == [0.5] * 4
    text = render_markdown(summarize(frames), title="t")
    forward, backward = text.split("## reverse_perturbation / d")
    assert "| method | subgroup | seeds | pearson_delta | n_conditions |" in forward and "match" not in forward
    assert "| method | match | seeds | top1 | top2 | n_queries |" in backward and "subgroup" not in backward


def test_profiles_round_trip_and_errors(tmp_path):
    frame = _frame({"A+B": [1, 2], "ctrl+C": [3, 4]})
    obs = pd.DataFrame({"role": ["test", "reverse_candidate"]}, index=frame.index)
    write_profiles(frame, tmp_path / "p.h5ad", obs=obs, info={"method": "x", "n": 3})
    back, obs_back, info = read_profiles(tmp_path / "p.h5ad")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert obs_back["role"].tolist() == ["test", "reverse_candidate"] and info["n"] == 3
    with pytest.raises(InputError, match="unique"):
        write_profiles(pd.concat([frame, frame]), tmp_path / "q.h5ad")
    assert not (tmp_path / "q.h5ad").exists()


def test_paired_embedding_round_trip_and_errors(tmp_path):
    obs = pd.DataFrame({"cell_type": list("aab")}, index=["c1", "c2", "c3"])
    x, y = np.arange(6.0).reshape(3, 2), -np.arange(6.0).reshape(3, 2)
    write_paired_embedding(obs, {"rna": x, "atac": y}, tmp_path / "e.h5ad", info={"method": "m"})
    obs2, mods, x2, y2 = read_paired_embedding(tmp_path / "e.h5ad")
    assert mods == ["rna", "atac"] and np.array_equal(x2, x) and np.array_equal(y2, y)
    import anndata as ad

    assert sorted(ad.read_h5ad(tmp_path / "e.h5ad").obsm) == ["X_m_atac", "X_m_rna"]  # scverse's X_ keys
    # a file written with the earlier keys (obsm['emb_<modality>']) still reads
    old = ad.AnnData(obs=obs, obsm={"emb_rna": x, "emb_atac": y}, uns={"cellmamba": {"modalities": ["rna", "atac"]}})
    old.write_h5ad(tmp_path / "old.h5ad")
    assert np.array_equal(read_paired_embedding(tmp_path / "old.h5ad")[3], y)
    with pytest.raises(InputError, match="two modalities"):
        write_paired_embedding(obs, {"rna": x}, tmp_path / "f.h5ad", info={"method": "m"})
    with pytest.raises(InputError, match="shape"):
        write_paired_embedding(obs, {"rna": x, "atac": y[:2]}, tmp_path / "f.h5ad", info={"method": "m"})
    with pytest.raises(InputError, match=r"info\['method'\]"):
        write_paired_embedding(obs, {"rna": x, "atac": y}, tmp_path / "f.h5ad")


def _clusters(n_per=40, n_types=3, dim=8, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_types, dim)) * 3
    labels = np.repeat([f"t{i}" for i in range(n_types)], n_per)
    x = centres[np.repeat(np.arange(n_types), n_per)] + rng.normal(scale=noise, size=(n_types * n_per, dim))
    return x, labels, rng


def test_cluster_agreement_recovers_separated_types_and_not_noise():
    x, labels, rng = _clusters()
    good = cluster_agreement(x, labels)
    assert good["ari"] > 0.95 and good["nmi"] > 0.95
    bad = cluster_agreement(x, rng.permutation(labels))
    assert bad["ari"] < 0.2


def test_score_paired_embedding_file_pairs_and_shuffles(tmp_path):
    x, labels, rng = _clusters()
    y = x + rng.normal(scale=0.01, size=x.shape)
    obs = pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))])
    write_paired_embedding(obs, {"rna": x, "protein": y}, tmp_path / "good.h5ad", info={"method": "m"})
    good = score_paired_embedding_file(tmp_path / "good.h5ad")
    assert list(good) == ["foscttm", "omics_mixing_entropy", "seurat_alignment", "nmi", "ari", "label_transfer",
                          "label_transfer_1to2", "label_transfer_2to1"]
    assert good["foscttm"] < 0.05 and good["label_transfer"] == 1.0 and good["ari"] > 0.95
    # y is x with tiny noise: each cell's nearest neighbours are of either modality, about evenly
    from cellmamba.metrics.foscttm import seurat_alignment_score
    assert good["seurat_alignment"] == seurat_alignment_score(np.vstack([x, y]), ["1"] * len(x) + ["2"] * len(y))
    assert good["seurat_alignment"] > 0.8
    write_paired_embedding(obs, {"rna": x, "protein": y[rng.permutation(len(y))]}, tmp_path / "bad.h5ad", info={"method": "m"})
    bad = score_paired_embedding_file(tmp_path / "bad.h5ad")
    assert 0.3 < bad["foscttm"] < 0.7
    far = {"rna": x, "protein": y + 100.0}  # the modalities apart: no cell has a neighbour of the other
    write_paired_embedding(obs, far, tmp_path / "far.h5ad", info={"method": "m"})
    assert score_paired_embedding_file(tmp_path / "far.h5ad")["seurat_alignment"] == 0.0
    write_paired_embedding(obs[[]], {"rna": x, "protein": y}, tmp_path / "nolabel.h5ad", info={"method": "m"})
    with pytest.raises(InputError, match="cell_type"):
        score_paired_embedding_file(tmp_path / "nolabel.h5ad")


def test_table_metric_order_is_each_tasks_own():
    from cellmamba.metrics import INTEGRATION_METRICS, MULTIOMICS_METRICS, metrics_frame

    rows = [metrics_frame({m: 0.5 for m in INTEGRATION_METRICS}, task="integration", dataset="d", method="pca", seed=0),
            metrics_frame({m: 0.5 for m in reversed(MULTIOMICS_METRICS)}, task="multiomics", dataset="e",
                          method="pca_cca", seed=0)]
    out = summarize(rows)
    assert list(out[out["task"] == "integration"]["metric"]) == list(INTEGRATION_METRICS)
    assert list(out[out["task"] == "multiomics"]["metric"]) == ["foscttm", "omics_mixing_entropy", "seurat_alignment",
                                                               "nmi", "ari", "label_transfer", "label_transfer_1to2",
                                                               "label_transfer_2to1"]


def test_table_metric_order_keeps_a_metric_family_together():
    """The perturbation table's DE-gene metrics are named by the configured number of DE genes
    (``pearson_delta_de50``); each sits with its family (``pearson_delta*`` before ``mse*``), by
    name within it, and the counts come last."""
    from cellmamba.metrics import metrics_frame

    names = ["n_conditions", "mse_de50", "top1", "pearson_delta_de50", "mse", "pearson_delta"]
    out = summarize([metrics_frame(dict.fromkeys(names, 0.5), task="perturbation", dataset="d", method="m", seed=0)])
    assert list(out["metric"]) == ["pearson_delta", "pearson_delta_de50", "mse", "mse_de50", "top1", "n_conditions"]


def test_de_gene_lists_without_published_ranking_reproduce_it():
    """Data without GEARS' uns ranking get the same top-20 DE genes recomputed (GEARS' get_DE_genes)."""
    from cellmamba.datasets import simulate_perturbation
    from cellmamba.metrics import de_gene_lists

    adata = simulate_perturbation(n_perturbed_genes=4, n_combos=3, cells_per_condition=20, n_ctrl=60, n_genes=60,
                                  seed=3)
    conditions = [c for c in adata.obs["condition"].astype(str).unique() if c != "ctrl"]
    published = de_gene_lists(adata, conditions)
    bare = adata.copy()
    del bare.uns["rank_genes_groups_cov_all"]
    recomputed = de_gene_lists(bare, conditions)
    assert recomputed == published
    assert all(len(v) == 20 for v in recomputed.values())
    with pytest.raises(InputError, match="no DE list"):
        de_gene_lists(adata, ["NOTAGENE+ctrl"])

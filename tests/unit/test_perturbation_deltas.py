"""The per-gene deltas the perturbation scoring writes (the scatter figure draws them)."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellmamba.datasets.gears_split import SUBGROUPS, PerturbationSplit, write_split
from cellmamba.errors import InputError
from cellmamba.io import write_profiles
from cellmamba.metrics.perturbation import read_deltas, score_perturbation_files, write_deltas


def _case(tmp_path):
    """6 ctrl cells, 3 cells each of A+ctrl, ctrl+B, A+B; 5 genes; DE lists as GEARS publishes them."""
    genes = [f"G{i}" for i in range(5)]
    conds = ["ctrl"] * 6 + ["A+ctrl"] * 3 + ["ctrl+B"] * 3 + ["A+B"] * 3
    rng = np.random.default_rng(0)
    X = rng.integers(0, 5, size=(len(conds), len(genes))).astype(np.float32)
    names = {"ctrl": "ctrl_1", "A+ctrl": "A_1+1", "ctrl+B": "B_1+1", "A+B": "A+B_1+1"}
    adata = ad.AnnData(X=X, obs=pd.DataFrame({"condition": conds, "condition_name": [names[c] for c in conds]},
                                             index=[f"c{i}" for i in range(len(conds))]),
                       var=pd.DataFrame(index=genes))
    adata.uns["rank_genes_groups_cov_all"] = {"A_1+1": np.array(["G1", "G0", "G2", "G3", "G4"]),
                                              "B_1+1": np.array(["G4", "G3", "G2", "G1", "G0"]),
                                              "A+B_1+1": np.array(["G2", "G4", "G0", "G1", "G3"])}
    adata.write_h5ad(tmp_path / "toy.h5ad")
    sub = {g: [] for g in SUBGROUPS}
    sub["unseen_single"], sub["combo_seen1"] = ["ctrl+B"], ["A+B"]
    write_split(PerturbationSplit(train=["A+ctrl", "ctrl"], val=[], test=["ctrl+B", "A+B"], test_subgroup=sub,
                                  val_subgroup={g: [] for g in SUBGROUPS}, seed=1, settings={}), tmp_path / "s.json")
    # predictions spell the conditions otherwise (B+ctrl, B+A): the same perturbations
    pred = pd.DataFrame([[1.0, 2.0, 0.5, 3.0, 0.0], [2.5, 0.0, 1.0, 1.5, 4.0]], index=["B+ctrl", "B+A"],
                        columns=genes)
    write_profiles(pred, tmp_path / "pred.h5ad")
    return X, np.array(conds), pred


def test_deltas_equal_hand_computed(tmp_path):
    X, conds, pred = _case(tmp_path)
    per, _, _ = score_perturbation_files(tmp_path / "toy.h5ad", tmp_path / "s.json", tmp_path / "pred.h5ad",
                                         n_de=2, deltas=tmp_path / "deltas.h5ad")
    data, info = read_deltas(tmp_path / "deltas.h5ad")
    assert info == {"dataset": "toy", "n_de": 2, "simulated": False}
    assert list(dict.fromkeys(data["condition"])) == ["ctrl+B", "A+B"]   # the split's test order
    ctrl = X[conds == "ctrl"].mean(axis=0, dtype=np.float64)
    for cond, spelled, de, subgroup in (("ctrl+B", "B+ctrl", {"G4", "G3"}, "unseen_single"),
                                        ("A+B", "B+A", {"G2", "G4"}, "combo_seen1")):
        block = data[data["condition"] == cond]
        assert list(block["gene"]) == [f"G{i}" for i in range(5)]
        measured = X[conds == cond].mean(axis=0, dtype=np.float64) - ctrl
        predicted = pred.loc[spelled].to_numpy() - ctrl
        np.testing.assert_allclose(block["measured"], measured, atol=1e-6)    # stored as float32
        np.testing.assert_allclose(block["predicted"], predicted, atol=1e-6)
        assert set(block.loc[block["de"], "gene"]) == de
        assert (block["subgroup"] == subgroup).all()
        assert block["pearson_delta"].iloc[0] == pytest.approx(np.corrcoef(measured, predicted)[0, 1])
        assert block["pearson_delta"].iloc[0] == per.loc[cond, "pearson_delta"]
        assert block["mse"].iloc[0] == per.loc[cond, "mse"]


def test_deltas_optional_and_checked(tmp_path):
    _case(tmp_path)
    per, _, _ = score_perturbation_files(tmp_path / "toy.h5ad", tmp_path / "s.json", tmp_path / "pred.h5ad", n_de=2)
    assert not (tmp_path / "deltas.h5ad").exists()   # nothing written unless asked
    frame = pd.DataFrame(np.zeros((2, 5)), index=list(per.index), columns=[f"G{i}" for i in range(5)])
    with pytest.raises(InputError, match="share conditions and genes"):
        write_deltas(frame, frame.iloc[:, :4], tmp_path / "bad.h5ad", per_condition=per,
                     de_genes={c: [] for c in per.index})
    with pytest.raises(InputError, match="a deltas file"):
        read_deltas(tmp_path / "pred.h5ad")

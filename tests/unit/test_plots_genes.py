"""Figures of the gene analyses (cellmamba.plots.genes) draw what their inputs hold."""
import numpy as np
import pandas as pd
import pytest

from cellmamba.errors import InputError


def _table(tmp_path):
    from cellmamba.metrics import metrics_frame, summarize, write_table

    frames = []
    for method, kinds in (("genemamba", ("token", "contextual")), ("genemamba_scratch", ("token", "contextual")),
                          ("random", ("",)), ("coexpression", ("",))):
        for k, kind in enumerate(kinds):
            for pair_set in ("all", "strict"):
                scores = {"auroc": 0.5 + 0.01 * k + (0.1 if method == "genemamba" else 0), "auprc": 0.2,
                          "n_pairs": 10.0}
                frames.append(metrics_frame(scores, task="gene_pairs", dataset=pair_set, method=method, seed=0,
                                            extra={"embedding": kind}))
    write_table(summarize(frames), tmp_path / "gene_pairs.csv", tmp_path / "gene_pairs.md", title="pairs")
    return tmp_path / "gene_pairs.csv"


def test_gene_pair_bars_plot_each_model_and_embedding(tmp_path):
    from cellmamba.plots.genes import gene_pair_bars

    data = gene_pair_bars(_table(tmp_path), tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").stat().st_size > 0
    assert set(data["dataset"]) == {"all", "strict"} and set(data["metric"]) == {"auroc", "auprc"}
    row = data[(data["method"] == "genemamba") & (data["embedding"] == "contextual") & (data["metric"] == "auroc")]
    assert row["mean"].tolist() == pytest.approx([0.61, 0.61])
    assert set(data.loc[data["method"] == "random", "embedding"]) == {""}
    pd.DataFrame({"metric": ["auroc"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="lacks columns"):
        gene_pair_bars(tmp_path / "bad.csv", tmp_path / "bad.png")


def test_rank_density_counts_every_gene_rank(tmp_path):
    from cellmamba.plots.genes import rank_density

    # two bins of 4 ranks per axis
    rows = [{"input_start": a, "input_end": a + 4, "output_start": b, "output_end": b + 4, "count": c}
            for (a, b), c in zip([(0, 0), (0, 4), (4, 0), (4, 4)], [5, 1, 0, 3])]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame({"metric": ["spearman", "overlap_top10"], "value": [0.25, 0.5]}).to_csv(tmp_path / "m.csv", index=False)
    data = rank_density({"genemamba": tmp_path / "d.csv", "genemamba_scratch": tmp_path / "d.csv"}, tmp_path / "r.png",
                        metrics={"genemamba": tmp_path / "m.csv"})
    assert data["method"].tolist() == ["genemamba", "genemamba_scratch"]
    assert data["n_genes"].tolist() == [9, 9]
    assert data["spearman"].iloc[0] == pytest.approx(0.25) and np.isnan(data["spearman"].iloc[1])
    assert (tmp_path / "r.png").exists() and (tmp_path / "r.pdf").exists()

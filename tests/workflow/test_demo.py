"""The demo end to end on the real demo data: census store -> shards -> QC -> gene statistics ->
rank, binned and patch token shards -> pretraining of each recipe and its Transformer peer.
Runs the real workflow (`snakemake --cores 2`, the default target) on a copy of the repository's
tracked files, so the checkout's results/ stay clean."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "cellmamba"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("tests/", "benchmarks/")):
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=work,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        raise AssertionError(f"demo failed:\n{proc.stderr[-5000:]}\n{logs}")
    return work


def test_demo_census_shards_hold_both_real_datasets(demo_run):
    import anndata as ad

    shards = sorted((demo_run / "results/census/shards").glob("*.h5ad"))
    assert len(shards) == 2
    adatas = [ad.read_h5ad(p) for p in shards]
    n_cells = sum(a.n_obs for a in adatas)
    assert n_cells == 559 + 600  # every cell of both datasets is primary data
    datasets = set().union(*(set(a.obs["dataset_id"].astype(str)) for a in adatas))
    assert len(datasets) == 2
    a = adatas[0]
    assert a.var.index.str.startswith("ENSG").all()
    measured = np.asarray(a.varm["measured"])
    assert measured.shape == (a.n_vars, len(a.uns["cellmamba"]["measured_datasets"]))
    # the Kang subset measured only 279 genes; the celltypist sample thousands
    assert sorted(measured.sum(0).tolist())[0] <= 279 < sorted(measured.sum(0).tolist())[-1]


def test_demo_gene_stats_and_tokens(demo_run):
    import pandas as pd

    stats = pd.read_csv(demo_run / "results/qc/gene_stats.tsv", sep="\t")
    assert (stats["n_cells_detected"] <= stats["n_cells_measured"]).all()
    detected = stats["n_cells_detected"] > 0
    assert stats.loc[detected, "nonzero_median"].gt(0).all()
    assert stats.loc[~detected, "nonzero_median"].isna().all()
    for tok in ("rank", "binned", "patch"):
        manifest = json.loads((demo_run / f"results/tokens/{tok}/manifest.json").read_text())
        assert len(manifest["shards"]) == 2, manifest
        prov = manifest["provenance"]
        assert prov["config"]["tokenize"][tok] and prov["config"]["census"]["n_shards"] == 2
        assert "cellmamba" in prov["packages"] and "created" in prov
        n_qc = sum(json.loads((demo_run / f"results/tokens/{tok}/{i}/manifest.json").read_text())["n_cells"]
                   for i in range(2))
        assert n_qc > 1000  # QC keeps most of the 1,159 real cells


def test_demo_pretrained_models_load_and_embed(demo_run):
    import pandas as pd
    import torch

    from cellmamba.models import CellModel, count_parameters, pool_cells
    from cellmamba.train.data import DataConfig, MaskedValueCollator, MaskedValueCollateConfig, build_dataloader

    sizes = {}
    for name in ("genemamba", "scmamba2", "genemamba_transformer", "scmamba2_transformer", "genemamba_u"):
        run = demo_run / "results/pretrain" / name
        metrics = pd.read_csv(run / "metrics.csv")
        assert metrics["step"].iloc[-1] == 20 and metrics["loss"].notna().all()
        model = CellModel.from_pretrained(run / "model")
        sizes[name] = count_parameters(model.backbone)
        assert (model.config.backbone.arch == "transformer") == name.endswith("_transformer")
    # GeneMamba_U: genemamba's Mamba2 forward direction only, its shape kept (so fewer parameters)
    assert CellModel.from_pretrained(demo_run / "results/pretrain/genemamba_u/model").config.backbone.arch == "mamba2"
    assert sizes["genemamba_u"] < sizes["genemamba"]
    for recipe in ("genemamba", "scmamba2"):
        assert abs(sizes[f"{recipe}_transformer"] - sizes[recipe]) <= 0.1 * sizes[recipe]
    # the pretrained scmamba2 model embeds real cells of the demo corpus
    model = CellModel.from_pretrained(demo_run / "results/pretrain/scmamba2/model").eval()
    loader = build_dataloader(demo_run / "results/tokens/binned/manifest.json",
                              MaskedValueCollator(MaskedValueCollateConfig(mask_ratio=0.15)),
                              DataConfig(max_len=256, batch_size=8))
    loader.set_epoch(0)
    batch = next(iter(loader))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["values"], attention_mask=batch["attention_mask"],
                    value_mask=batch["value_mask"])
    emb = pool_cells(out, "cls")
    assert emb.shape == (8, model.config.backbone.d_model) and torch.isfinite(emb).all()
    assert emb.std(0).mean() > 0  # cells are not all embedded alike


def _finetuned(cfg) -> set[str]:
    """The fine-tuned methods of the demo's tables: each model and its scratch control."""
    assert cfg["scratch_controls"], "the demo shows what pretraining buys"
    return set(cfg["models"]) | {f"{m}_scratch" for m in cfg["models"]}


def test_demo_scratch_controls_are_their_models_fine_tuned_from_random_init(demo_run):
    """Every fine-tuning task has a <model>_scratch run per model: the same fine-tuning settings
    and architecture, init "scratch" (its log says no pretrained weights were read)."""
    import yaml

    cfg = yaml.safe_load((demo_run / "config/config.yaml").read_text())["evaluation"]
    dataset = {"annotation": cfg["annotation"]["datasets"][0], "integration": cfg["integration"]["datasets"][0],
               "perturbation": cfg["perturbation"]["datasets"][0]}
    for task, d in dataset.items():
        sub = f"{d}/protocol" if task == "integration" else d
        for m in cfg["models"]:
            def info(name):  # run.json: provenance, the run's facts under "config", its settings under theirs
                path = demo_run / f"results/{task}/{sub}/{name}/seed0/train/run.json"
                return json.loads(path.read_text())["config"]

            pretrained, scratch = info(m), info(f"{m}_scratch")
            assert pretrained["config"]["init"] == "pretrained" and scratch["config"]["init"] == "scratch"
            same = {k: v for k, v in pretrained["config"].items() if k != "init"}
            assert same == {k: v for k, v in scratch["config"].items() if k != "init"}, (task, m)
            assert scratch["pretrained_params"] == pretrained["pretrained_params"] > 0
            log = demo_run / "logs" / f"finetune_{task}" / (f"{sub}/{m}_scratch/seed0.log")
            assert "random init" in log.read_text(), log


def test_demo_tables_hold_every_method_and_label_simulated_rows(demo_run):
    """Annotation (real pbmc68k_reduced) and integration (simulated) tables: every model, every
    baseline, real metric values; simulated rows say so."""
    import pandas as pd
    import yaml

    cfg = yaml.safe_load((demo_run / "config/config.yaml").read_text())["evaluation"]
    for task, key in (("annotation", "accuracy"), ("integration", "avg_bio")):
        table = pd.read_csv(demo_run / f"results/tables/{task}.csv")
        methods = _finetuned(cfg) | set(cfg[task]["baselines"])
        assert set(table["method"]) == methods, (task, set(table["method"]))
        values = table[table["metric"] == key]["mean"]
        assert len(values) >= len(methods) and values.between(0, 1).all(), (task, values.tolist())
        md = (demo_run / f"results/tables/{task}.md").read_text()
        assert ("(simulated)" in md) == (task == "integration"), md[:500]
    variants = set(pd.read_csv(demo_run / "results/tables/integration.csv")["variant"])
    assert variants == ({"protocol", "all_genes"} if cfg["all_genes_variant"] else {"protocol"})


def test_demo_perturbation_and_multiomics_tables(demo_run):
    """Perturbation (simulated, GEARS split) and multi-omics (simulated RNA + ATAC) tables: every
    model / method and baseline, per-subgroup rows, reverse perturbation, FOSCTTM in [0, 1]."""
    import json

    import pandas as pd
    import yaml

    cfg = yaml.safe_load((demo_run / "config/config.yaml").read_text())["evaluation"]
    table = pd.read_csv(demo_run / "results/tables/perturbation.csv")
    forward = table[table["task"] == "perturbation"]
    assert set(forward["method"]) == _finetuned(cfg) | set(cfg["perturbation"]["baselines"])
    assert "all" in set(forward["subgroup"]) and len(set(forward["subgroup"])) >= 3, set(forward["subgroup"])
    pearson = forward[(forward["metric"] == "pearson_delta") & (forward["subgroup"] == "all")]
    assert pearson.set_index("method")["mean"].between(-1, 1).all(), pearson
    # the no-change baseline predicts no change: Pearson 0 by GEARS' convention, never a hidden NaN
    assert pearson.set_index("method").loc["no_change", "mean"] == 0.0
    reverse = table[table["task"] == "reverse_perturbation"]
    assert {f"top{k}" for k in range(1, 9)} <= set(reverse["metric"]), set(reverse["metric"])
    split = json.loads((demo_run / "results/perturbation/sim_perturbation/split.json").read_text())
    assert split["gears_version"] == "0.0.2" and set(split["test_subgroup"]) == {
        "combo_seen0", "combo_seen1", "combo_seen2", "unseen_single"}
    assert "(simulated)" in (demo_run / "results/tables/perturbation.md").read_text()

    multi = pd.read_csv(demo_run / "results/tables/multiomics.csv")
    assert set(multi["method"]) == set(cfg["multiomics"]["methods"]) | set(cfg["multiomics"]["baselines"])
    fos = multi[multi["metric"] == "foscttm"].set_index("method")["mean"]
    assert fos.between(0, 1).all() and (fos < 0.5).all(), fos  # every method pairs cells better than chance
    assert "(simulated)" in (demo_run / "results/tables/multiomics.md").read_text()


def test_demo_checkpoint_info_and_embed_cli(demo_run, tmp_path):
    """`python -m cellmamba info` and `embed` on the demo's pretrained scmamba2 model and its real
    pbmc68k_reduced dataset (vocabulary passed explicitly: works whether or not the model
    directory holds vocabulary.tsv)."""
    import anndata as ad

    model_dir = demo_run / "results/pretrain/scmamba2/model"
    proc = subprocess.run([sys.executable, "-m", "cellmamba", "info", "--json", str(model_dir)],
                          capture_output=True, text=True, cwd=demo_run)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["recipe"] == "scmamba2" and info["tokenizer"] == "binned" and info["n_parameters"] > 0
    out = tmp_path / "embedded.h5ad"
    proc = subprocess.run([sys.executable, "-m", "cellmamba", "embed", "--checkpoint", str(model_dir),
                           "--vocabulary", str(demo_run / "results/qc/gene_stats.tsv"), "--device", "cpu",
                           str(demo_run / "results/datasets/pbmc68k_reduced.h5ad"), str(out)],
                          capture_output=True, text=True, cwd=demo_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    adata = ad.read_h5ad(out)
    emb = adata.obsm["X_cellmamba_scmamba2"]
    assert emb.shape == (adata.n_obs, info["d_model"]) and np.isfinite(emb).all()
    assert emb.std(0).mean() > 0
    assert adata.uns["cellmamba"]["embeddings"]["X_cellmamba_scmamba2"]["n_genes_used"] > 500
    # the demo's model directories carry their vocabulary: embed needs no --vocabulary
    assert info["vocabulary_tsv"] is True
    proc = subprocess.run([sys.executable, "-m", "cellmamba", "embed", "--checkpoint",
                           str(demo_run / "results/pretrain/genemamba/model"), "--device", "cpu",
                           str(demo_run / "results/datasets/pbmc68k_reduced.h5ad"), str(tmp_path / "rank.h5ad")],
                          capture_output=True, text=True, cwd=demo_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "X_cellmamba_genemamba" in ad.read_h5ad(tmp_path / "rank.h5ad").obsm


def test_demo_figures_and_report(demo_run):
    """Every figure of the demo exists as PNG and PDF, and `snakemake --report` packs figures and
    tables into one zip (as a user types it after the demo)."""
    import zipfile

    figures = sorted((demo_run / "results/figures").glob("*.png"))
    names = {p.stem.split("_")[0] for p in figures}
    assert {"metrics", "umap", "perturbation", "confusion", "pretrain"} <= names, names
    for png in figures:
        assert png.stat().st_size > 10_000 and png.with_suffix(".pdf").is_file(), png
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--report", "report.zip"], cwd=demo_run,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(demo_run / "report.zip") as zf:
        packed = " ".join(zf.namelist())
    for stem in ("metrics_perturbation", "umap_multiomics", "confusion_pbmc68k_reduced", "table_annotation"):
        assert stem in packed, (stem, packed[:2000])


def test_rehearsal_plan_resolves_the_settings_the_demo_jobs_ran_with(demo_run):
    """benchmarks/rehearse.py's plan of the demo config holds, for every GPU job kind, the settings
    the workflow's own jobs recorded (pretrain_config.json, the fine-tuning and multi-omics
    run.json): what the rehearsal runs is what the rules pass."""
    import dataclasses
    import importlib.util

    from cellmamba.train.pretrain import PretrainConfig

    spec = importlib.util.spec_from_file_location("rehearse", REPO / "benchmarks" / "rehearse.py")
    rehearse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearse)
    plan = rehearse.make_plan([demo_run / "config" / "config.yaml"], snakefile=demo_run / "Snakefile", workdir=demo_run)
    checked = set()
    for job in plan["jobs"]:
        w, settings = job["wildcards"], job["params"]["settings"]
        if job["rule"] == "pretrain":  # the rule passes config sub-trees; the job records what they resolve to
            settings = dataclasses.asdict(PretrainConfig.from_workflow(**settings))
            recorded = json.loads((demo_run / f"results/pretrain/{w['model']}/pretrain_config.json").read_text())["config"]
        else:
            task = {"finetune_annotation": "annotation", "finetune_integration": "integration",
                    "finetune_perturbation": "perturbation", "train_multiomics": "multiomics"}[job["rule"]]
            sub = f"{w['variant']}/" if "variant" in w else ""
            run = demo_run / f"results/{task}/{w['dataset']}/{sub}{w['method']}/seed{w['seed']}/train/run.json"
            recorded = json.loads(run.read_text())["config"]
            recorded = recorded.get("config", recorded)  # multi-omics nests the run's config one level down
        keys = [k for k in settings if k != "max_len"]  # fine-tuning clamps max_len to the genes selected + 1
        assert {k: settings[k] for k in keys} == {k: recorded[k] for k in keys}, job["job"]
        checked.add(job["rule"])
    assert checked == {"pretrain", "finetune_annotation", "finetune_integration", "finetune_perturbation",
                       "train_multiomics"}


def test_demo_tables_print_both_models_parameter_counts(demo_run):
    """Every pretrained model's rows carry its parameter counts; each Transformer peer's backbone is
    within 10% of its Mamba model's (the same-size rule), and baselines have none."""
    import pandas as pd

    table = pd.read_csv(demo_run / "results/tables/annotation.csv")
    counts = table.drop_duplicates("method").set_index("method")
    for recipe in ("genemamba", "scmamba2"):
        mamba, peer = counts.loc[recipe], counts.loc[f"{recipe}_transformer"]
        assert mamba["n_params"] > 0 and peer["n_params"] > 0
        assert abs(peer["n_params_backbone"] / mamba["n_params_backbone"] - 1) <= 0.10, (recipe, mamba, peer)
    assert counts.loc["logreg", ["n_params", "n_params_backbone"]].isna().all()
    assert "n_params" in (demo_run / "results/tables/annotation.md").read_text()

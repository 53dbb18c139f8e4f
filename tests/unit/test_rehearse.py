"""benchmarks/rehearse.py: the plan resolves every GPU job of a config's DAG with its rule's own
params, and the harness runs each rule's real entry point at tiny sizes on CPU."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "rehearse.py"
GPU_RULES = ("pretrain", "finetune_annotation", "finetune_integration", "finetune_perturbation", "train_multiomics")


def _module():
    spec = importlib.util.spec_from_file_location("rehearse", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def paper_plan():
    return _module().make_plan([REPO / "config" / "paper.yaml"])


def _dry_run_counts(*configfiles) -> dict[str, int]:
    """Job counts per rule of `snakemake -n all` (Snakemake's own DAG)."""
    args = [sys.executable, "-m", "snakemake", "-n", "all"] + [a for c in configfiles for a in ("--configfile", str(c))]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_plan_covers_every_gpu_job_of_the_paper_dag(paper_plan):
    """One entry per job kind; their jobs_in_dag add up to Snakemake's own job count per GPU rule."""
    counts = _dry_run_counts(REPO / "config" / "paper.yaml")
    for rule in GPU_RULES:
        planned = sum(j["jobs_in_dag"] for j in paper_plan["jobs"] if j["rule"] == rule)
        assert planned == counts[rule], (rule, planned, counts[rule])
    kinds = [j["job"] for j in paper_plan["jobs"]]
    # pretrain, annotation, integration (2 variants), perturbation: 5 models each (genemamba_u the fifth); multi-omics 6
    assert len(kinds) == len(set(kinds)) == 5 + 5 + 10 + 5 + 6


def test_plan_params_are_the_rules_and_keep_the_papers_batch(paper_plan):
    """Pretraining reaches pretrain.batch_size cells per optimizer step in micro-batches of
    models.<recipe>.micro_batch_size; fine-tuning settings are evaluation.<task>.finetune + seed."""
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    jobs = {j["job"]: j for j in paper_plan["jobs"]}
    from cellmamba.train.pretrain import PretrainConfig

    for model in ("genemamba", "scmamba2", "genemamba_transformer", "scmamba2_transformer"):
        s = dataclasses.asdict(PretrainConfig.from_workflow(**jobs[f"pretrain/{model}"]["params"]["settings"]))
        recipe = model.removesuffix("_transformer")
        assert s["batch_size"] == paper["models"][recipe]["micro_batch_size"]
        assert s["batch_size"] * s["grad_accum"] == paper["pretrain"]["batch_size"] * paper["pretrain"]["grad_accum"]
        assert s["context_length"] == paper["models"][recipe]["context_length"]
        for key in ("merge", "merge_every", "value_encoding"):  # the recipe's published backbone, as the config says
            assert s[key] == paper["models"][recipe][key], (model, key)
        assert s["backbone"] == ("transformer" if model.endswith("_transformer") else paper["models"][recipe]["backbone"])
    ann = jobs["finetune_annotation/scmamba2"]
    assert ann["params"]["settings"] == {**paper["evaluation"]["annotation"]["finetune"], "seed": 0,
                                         "backend": paper["backend"], "init": "pretrained"}
    assert ann["datasets"] == paper["evaluation"]["annotation"]["datasets"]
    assert jobs["finetune_integration/protocol/genemamba"]["params"]["genes"]["n_hvg"] == 1200
    assert jobs["finetune_integration/all_genes/genemamba"]["params"]["genes"] == {"n_hvg": None, "min_counts": 0}
    mo = jobs["train_multiomics/bmmc_multiome/scmamba_bimamba"]["params"]["settings"]
    assert mo["arch"] == "bimamba_mamba2" and mo["n_layers"] == paper["models"]["scmamba"]["n_layers"]
    # the rna tower's gene order: the rule's input (GENCODE 48's order, rule gene_positions)
    assert jobs["train_multiomics/bmmc_multiome/scmamba_bimamba"]["positions"] == \
        "results/genes/gene_positions_gencode48.tsv.gz"


def test_micro_batch_that_does_not_divide_the_batch_is_a_config_error(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"scmamba2": {"micro_batch_size": 3}}}))
    with pytest.raises(Exception, match=r"models\.scmamba2\.micro_batch_size \(3\) must divide pretrain\.batch_size"):
        _module().make_plan([REPO / "config" / "paper.yaml", overlay])


def test_a_tokenizer_other_than_the_recipes_is_a_config_error(tmp_path):
    """models.<recipe>.tokenizer is a check: another value fails the DAG with the recipe's tokens named."""
    from cellmamba.train.pretrain import RECIPE_TOKENIZER

    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"genemamba": {"tokenizer": "binned"}}}))
    with pytest.raises(Exception, match=r"models\.genemamba\.tokenizer is 'binned', but the genemamba recipe reads 'rank'"):
        _module().make_plan([REPO / "config" / "paper.yaml", overlay])
    with _module()._workflow([REPO / "config" / "paper.yaml"], REPO / "Snakefile", REPO) as wf:
        rules = wf.globals["RECIPE_TOKENIZER"]
    assert {r: rules[r] for r in RECIPE_TOKENIZER} == RECIPE_TOKENIZER  # the workflow's table is the package's


def test_counts_generator_expresses_exactly_nnz_genes_per_cell():
    import numpy as np

    X = _module()._counts(70, 50, 12, np.random.default_rng(0), weights=np.linspace(1, 2, 50) / np.linspace(1, 2, 50).sum())
    per_cell = np.diff(X.indptr)
    assert (per_cell == 12).all() and X.shape == (70, 50)
    for i in range(70):  # distinct, sorted genes, counts >= 1
        row = X.indices[X.indptr[i]:X.indptr[i + 1]]
        assert (np.diff(row) > 0).all()
    assert X.data.min() >= 1


def test_set_overrides_one_setting_of_a_copy_and_refuses_unknown_keys():
    mod = _module()
    job = {"job": "train_multiomics/x/scmamba", "params": {"settings": {"lr": 0.0005, "precision": "auto",
                                                                      "nested": {"a": 1}}}}
    out = mod.apply_overrides(job, ["lr=1e-4", "precision=fp32", "nested.a=3"])
    assert out["params"]["settings"] == {"lr": 1e-4, "precision": "fp32", "nested": {"a": 3}}
    assert out["overrides"] == "lr=1e-4 precision=fp32 nested.a=3"
    assert job["params"]["settings"]["lr"] == 0.0005 and "overrides" not in job  # the plan's job is untouched
    assert mod.apply_overrides(job, []) is job
    with pytest.raises(SystemExit, match="has no setting 'lrr'"):
        mod.apply_overrides(job, ["lrr=1"])
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        mod.apply_overrides(job, ["lr"])


@pytest.mark.slow
def test_tiny_rehearsal_runs_each_rules_entry_point(tmp_path):
    """The demo config's plan, one job per GPU rule, at tiny sizes on CPU: every row ok, the
    timer saw each optimizer step, pretraining cells fill the context, and the projection is
    the configured steps times the measured step time."""
    plan = tmp_path / "plan.json"
    subprocess.run([sys.executable, str(SCRIPT), "plan", "--configfile", "config/config.yaml", "--out", str(plan)],
                   cwd=REPO, check=True, capture_output=True)
    steps, warmup = 5, 1
    only = r"^pretrain/genemamba$|^finetune_annotation/genemamba$|^finetune_integration/protocol/scmamba2$|" \
           r"^finetune_perturbation/genemamba$|^train_multiomics/.*/scmamba$"
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--plan", str(plan), "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path), "--name", "r.csv", "--only", only, "--steps", str(steps),
                           "--warmup", str(warmup), "--vocab-genes", "300", "--dataset-genes", "120",
                           # the multiome job: 2 batches of cells over 3 epochs, a 3-step warm-up
                           "--max-cells", "128", "--multiomics-warmup", "3"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["job"]: r for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert len(rows) == 5, list(rows)
    for job, r in rows.items():
        assert r["status"] == "ok", (job, r["error"])
    jobs = {j["job"]: j for j in json.loads(plan.read_text())["jobs"]}
    from cellmamba.train.pretrain import PretrainConfig

    pre = rows["pretrain/genemamba"]
    s = dataclasses.asdict(PretrainConfig.from_workflow(**jobs["pretrain/genemamba"]["params"]["settings"]))
    metrics = list(csv.DictReader(open(tmp_path / "w" / f"pretrain_genemamba_steps{steps}" / "metrics.csv")))
    assert len(metrics) == steps  # log_every 1: one row per optimizer step
    assert int(pre["steps_timed"]) == steps - warmup
    assert int(pre["cells_per_step"]) == s["batch_size"] * s["grad_accum"]
    assert int(pre["tokens_per_cell"]) == s["context_length"]  # every generated cell fills the context
    assert float(pre["projected_h"]) == pytest.approx(s["max_steps"] * float(pre["sec_per_step"]) / 3600, abs=0.006)
    assert int(pre["configured_steps"]) == s["max_steps"]
    ann = rows["finetune_annotation/genemamba"]
    assert int(ann["cells_per_step"]) == jobs["finetune_annotation/genemamba"]["params"]["settings"]["batch_size"]
    assert float(ann["rest_s_per_cell"]) > 0
    assert ann["ssl_loss_first"] == ann["adv_loss_first"] == ""  # no adversary: no terms
    mo_job, mo = next((j, r) for j, r in rows.items() if j.startswith("train_multiomics/"))
    assert 0 <= float(mo["retrieval_acc_last"]) <= 1 and float(mo["infonce_first"]) <= float(mo["loss_first"])
    mo_dir = tmp_path / "w" / mo_job.replace("/", "_")
    import anndata as ad

    assert ad.read_h5ad(mo_dir / "dataset.h5ad", backed="r").n_obs == 128      # capped: 2 batches of 64
    lr = [float(r["lr"]) for r in csv.DictReader(open(mo_dir / "train" / "metrics.csv"))]
    peak = jobs[mo_job]["params"]["settings"]["lr"]
    assert len(lr) == 6 and lr[0] == pytest.approx(peak / 3) and lr[2] == pytest.approx(peak)  # 3 epochs x 2 steps
    integ = rows["finetune_integration/protocol/scmamba2"]
    for end in ("first", "last"):  # the adversarial objective's two terms add up to its loss
        assert float(integ[f"ssl_loss_{end}"]) + float(integ[f"adv_loss_{end}"]) == \
            pytest.approx(float(integ[f"loss_{end}"]), abs=2e-3)


def _recorded_rows() -> list[dict]:
    """Rows of the recorded rehearsals (benchmarks/results/rehearsal_*.csv) at the shipped settings:
    rows of a configuration that was then changed say "(before)" in their config column."""
    rows = []
    for path in sorted((REPO / "benchmarks" / "results").glob("rehearsal_*.csv")):
        with open(path, newline="") as fh:
            rows += [dict(r, file=path.name) for r in csv.DictReader(fh) if "(before)" not in r.get("config", "")]
    return rows


def test_profile_runtimes_cover_the_recorded_rehearsal():
    """The Slurm profile's GPU runtimes are derived from the rehearsal: every job kind measured at
    the shipped settings ran, stayed under the 72 GiB line, and its projected wall time fits the
    profile's runtime with a margin (pretraining excepted: it resumes across 48 h partition limits)."""
    rows = _recorded_rows()
    if not rows:
        pytest.skip("no recorded rehearsal in benchmarks/results")
    line = _module().MEMORY_LINE_GIB
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    for r in rows:
        where = f"{r['file']}: {r['job']}"
        assert r["status"] == "ok", f"{where}: {r['status']} {r.get('error', '')}"
        assert float(r["peak_alloc_gib"]) <= line, where
        if r["rule"] != "pretrain":
            minutes = profile[r["rule"]]["runtime"]
            assert minutes >= 1.5 * 60 * float(r["projected_h"]), f"{where}: runtime {minutes} min"


def test_memory_cap_without_cuda_is_an_error(tmp_path):
    """An explicit cap that cannot be honoured stops the run before any job, naming the flag."""
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA: the cap would apply")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"jobs": []}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--plan", str(plan), "--work", str(tmp_path / "w"),
                           "--out", str(tmp_path), "--memory-cap-gib", "74.5"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "--memory-cap-gib: no CUDA device" in proc.stderr
    assert not list(tmp_path.glob("*.csv"))



def test_plot_draws_each_jobs_newest_row(tmp_path, monkeypatch):
    """Newest row per job across files; a fine-tuning "(before)" row stays beside its fix, a
    superseded pretraining row does not; failed rows are not drawn."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from plot_rehearsal import newest_rows

    cols = "run,config,job,rule,status,sec_per_step\n"
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    new.write_text(cols + "1,a,pretrain/m,pretrain,ok,1.0\n2,b,pretrain/m,pretrain,ok,2.0\n"
                   "2,b,finetune_annotation/m,finetune_annotation,failed,9.0\n")
    old.write_text(cols + "1,x (before),pretrain/m,pretrain,ok,3.0\n"
                   "1,x (before),finetune_annotation/m,finetune_annotation,over_line,4.0\n"
                   "2,y (after),finetune_perturbation/m,finetune_perturbation,ok,5.0\n")
    got = newest_rows(str(new), str(old))
    assert dict(zip(got["_key"], got["sec_per_step"])) == {
        "pretrain/m": 2.0, "finetune_annotation/m (before)": 4.0, "finetune_perturbation/m": 5.0}

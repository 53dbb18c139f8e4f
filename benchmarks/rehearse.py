"""Paper-scale rehearsal: every GPU job of a config's DAG, at its configured size, on generated
inputs of the published shapes, through the entry points the workflow scripts call.

Two steps, so the settings come from the rules themselves and the GPU machine needs no Snakemake:

    # 1. CPU, in the checkout: load the workflow as `snakemake --configfile config/paper.yaml` does
    #    (Snakefile's configfile + the overlay, schema defaults, the same helper functions) and
    #    evaluate each GPU rule's own params for one job of every kind
    python benchmarks/rehearse.py plan --configfile config/paper.yaml --out plan.json
    # 2. any CUDA machine: run each job's real training loop for --steps optimizer steps, then its
    #    prediction / embedding pass; one CSV row per job kind
    python benchmarks/rehearse.py run --plan plan.json --work /tmp/rehearse --out benchmarks/results

Job kinds (one row each): pretrain/<model>; finetune_annotation/<model>;
finetune_integration/<variant>/<model>; finetune_perturbation/<model>; train_multiomics/<dataset>/<method>.
A ``<model>_scratch`` control runs its model's job from random init (the same shapes and cost): it
is counted in its model's ``jobs_in_dag`` and not rehearsed again.
Fine-tuning starts from the model the pretrain row of the same model exported (a real model
directory with its vocabulary), as the rules do.

What is generated (published shapes, ../shared/DATASETS.md; :data:`SHAPES`):
- pretraining corpus: QC-shard h5ad files over the 60,530-gene human vocabulary (census
  2024-07-01) in which EVERY cell expresses enough genes to fill its model's context (worst case
  for memory: no batch is shorter than ``context_length``), tokenized by the real tokenizers with
  the config's tokenize settings, gene statistics by the real gene_stats code;
- fine-tuning datasets: counts of the published gene and cell numbers' gene axis (cells: as many
  as ``--steps`` steps need), 90% of genes expressed per cell (near-full sequences), in the
  standard dataset schema the prepare_dataset rule writes; each cell type and batch raises its own
  marker genes, and every modality of a multi-omics cell follows its cell type
  (:func:`_programmed_counts`), so the fine-tuning losses can fall below chance.

What the rehearsal overrides (cost-neutral bookkeeping only): pretraining ``max_steps`` (=
``--steps``), ``warmup_steps`` (a fifth of it, so the loss can move), ``checkpoint_every`` /
``log_every``; fine-tuning ``epochs`` = 1 over a dataset sized for ``--steps`` steps. Every
size setting (model, context, cells per step, micro-batch, accumulation, recompute, precision,
backend) is the plan's.

Per row: peak GPU memory (allocated and reserved), median optimizer-step time over the steps
after ``--warmup``, tokens and cells per second, an MFU lower bound (6 x parameters x tokens/s
over the dense bf16 peak; the SSM scan's FLOPs are not counted), loss at the first and last step,
(means of the first and of the last three steps), the process' peak host memory so far, the wall
time of the rest of the job (model load, tokenization, validation, prediction) per cell,
and the projected wall time of the full job: configured steps (pretraining) or epochs x steps
per epoch on the published cell numbers (fine-tuning) times the step time, plus the rest at its
measured rate per cell.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: GPU rules of the workflow and the script each runs (rules/pretrain.smk, rules/finetune.smk)
GPU_RULES = ("pretrain", "finetune_annotation", "finetune_integration", "finetune_perturbation", "train_multiomics")

#: published shapes (../shared/DATASETS.md; config/datasets.yaml descriptions)
SHAPES = {
    "vocabulary": {"genes": 60530},                                      # census 2024-07-01 human var
    "myeloid": {"reference": 9748, "query": 3430, "genes": 3000},        # DATASETS.md 2
    "ms": {"reference": 7844, "query": 13468, "genes": 3000},            # DATASETS.md 3
    "hpancreas": {"reference": 10600, "query": 4218, "genes": 3000},     # DATASETS.md 4
    "pbmc10k": {"cells": 11990, "genes": 3346, "batches": 2},            # DATASETS.md 1 (8,030 + 3,960)
    "norman": {"cells": 91205, "genes": 5045, "ctrl": 7353},             # DATASETS.md 5
    "bmmc_cite": {"cells": 90261, "rna": 13953, "protein": 134},         # DATASETS.md 6
    "bmmc_multiome": {"cells": 69249, "rna": 13431, "atac": 116490},     # DATASETS.md 6
}
#: dense bf16 tensor-core peak (SXM datasheets); the H200 has the H100's arithmetic
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
#: smallest generated pretraining corpus (784 cells x 2,048 genes detected 60,035 of 60,530 genes)
MIN_CORPUS_CELLS = 768
#: the line every job must stay under on any GPU (an 80 GB card with a margin), GiB
MEMORY_LINE_GIB = 72.0
CSV_FIELDS = ["job", "rule", "model", "status", "device", "date", "code", "kernels", "params", "cells_per_step",
              "micro_batch", "grad_accum", "tokens_per_cell", "steps_timed", "sec_per_step", "tokens_per_s",
              "cells_per_s", "mfu_lower_bound", "peak_alloc_gib", "peak_reserved_gib", "loss_first", "loss_last",
              "ssl_loss_first", "ssl_loss_last", "adv_loss_first", "adv_loss_last", "infonce_first", "infonce_last",
              "retrieval_acc_first", "retrieval_acc_last", "host_peak_gib", "rest_s", "rest_cells", "rest_s_per_cell", "configured_steps", "projected_h",
              "projected_dataset",
              "jobs_in_dag", "projected_h_all", "overrides", "error"]


# ------------------------------------------------------------------------------------------ plan
@contextlib.contextmanager
def _workflow(configfiles, snakefile: Path, workdir: Path):
    """The workflow as `snakemake --configfile ...` builds it (config merged, validated with the
    schema's defaults, helper functions defined), without building a DAG."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    configfiles = [Path(c).resolve() for c in configfiles]
    with SnakemakeApi(OutputSettings()) as api:
        wapi = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(configfiles=configfiles),
                            snakefile=snakefile.resolve(), workdir=workdir.resolve())
        yield wapi._workflow


def _rule_params(workflow, rule: str, wildcards: dict) -> dict:
    """The rule's params for these wildcards, evaluated by the rule's own functions."""
    from snakemake.iocontainers import Wildcards

    w = Wildcards(fromdict=wildcards)
    out = {}
    for key, value in workflow.get_rule(rule).params.items():
        out[key] = value(w) if callable(value) else value
    return json.loads(json.dumps(out, default=str))


def make_plan(configfiles, *, snakefile: Path = REPO / "Snakefile", workdir: Path = REPO) -> dict:
    """One entry per GPU job kind of the config's DAG, with the params its rule passes."""
    with _workflow(configfiles, snakefile, workdir) as wf:
        g, config = wf.globals, wf.config
        ev = g["EVAL"]
        seed = int(ev["seeds"][0])
        jobs = []

        def add(rule, name, wildcards, **extra):
            jobs.append({"job": name, "rule": rule, "wildcards": wildcards,
                         "params": _rule_params(wf, rule, wildcards), **extra})

        models = list(g["pretrain_models"]())
        for model in models:
            recipe = g["_recipe"](model)  # rules/common.smk: "<recipe>", "<recipe>_transformer", "<recipe>_u"
            add("pretrain", f"pretrain/{model}", {"model": model}, jobs_in_dag=1,
                tokenizer=g["RECIPE_TOKENIZER"][recipe],
                tokenize=dict(config["tokenize"][g["RECIPE_TOKENIZER"][recipe]],
                              chunk_cells=config["tokenize"]["chunk_cells"]),
                gene_sets=list(config["pretrain"]["gene_sets"]), target_sum=config["gene_stats"]["target_sum"])
        n_seeds = len(ev["seeds"])
        # a <model>_scratch control is its model's job from random init: the same shapes, the same
        # cost, so it is counted in its model's kind rather than rehearsed again
        runs = 2 if ev["scratch_controls"] else 1
        for task, rule in (("annotation", "finetune_annotation"), ("perturbation", "finetune_perturbation")):
            datasets = list(g["task_datasets"](task))
            if not datasets:
                continue
            for method in ev["models"]:
                add(rule, f"{rule}/{method}", {"dataset": datasets[0], "method": method, "seed": str(seed)},
                    datasets=datasets, jobs_in_dag=len(datasets) * n_seeds * runs)
        for dataset in g["task_datasets"]("integration"):
            for variant in g["variants"](dataset):
                for method in ev["models"]:
                    add("finetune_integration", f"finetune_integration/{variant}/{method}",
                        {"dataset": dataset, "variant": variant, "method": method, "seed": str(seed)},
                        datasets=[dataset], jobs_in_dag=n_seeds * runs)
        for dataset in g["task_datasets"]("multiomics"):
            for method in ev["multiomics"]["methods"]:
                add("train_multiomics", f"train_multiomics/{dataset}/{method}",
                    {"dataset": dataset, "method": method, "seed": str(seed)}, datasets=[dataset], jobs_in_dag=n_seeds,
                    positions=g["gene_positions"](),
                    positions_inputs={"gene_table": g["RESOURCES"]["gene_table"], "anchors": g["RESOURCES"]["positions"]})
    return {"configfiles": [str(c) for c in configfiles], "created": dt.datetime.now().isoformat(timespec="seconds"),
            "jobs": jobs}


# ------------------------------------------------------------------------------------------ data
def vocabulary_table(n_genes: int):
    """The first ``n_genes`` genes of the packaged human gene table (feature_id, feature_name)."""
    import pandas as pd

    table = pd.read_csv(REPO / "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz", header=None,
                        usecols=[0, 1], names=["feature_id", "feature_name"], nrows=n_genes)
    table["feature_name"] = table["feature_name"].fillna(table["feature_id"]).astype(str)
    return table


def _counts(n_cells: int, n_genes: int, nnz: int, rng, *, weights=None):
    """CSR float32 counts: each cell expresses exactly ``nnz`` distinct genes (drawn by ``weights``),
    counts 1 + Poisson(gene mean)."""
    import scipy.sparse as sp

    nnz = min(nnz, n_genes)
    p = weights if weights is not None else np.full(n_genes, 1.0 / n_genes)
    rows, logp = [], np.log(p)
    for s in range(0, n_cells, 64):  # weighted sampling without replacement: Gumbel top-k
        keys = logp[None, :] + rng.gumbel(size=(min(64, n_cells - s), n_genes))
        rows.append(np.sort(np.argpartition(-keys, nnz - 1, axis=1)[:, :nnz], axis=1))
    indices = np.concatenate(rows).ravel().astype(np.int32)
    lam = (p * n_genes * 2.0)[indices]
    data = (1 + rng.poisson(lam)).astype(np.float32)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * nnz
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def _programmed_counts(groups: np.ndarray, n_genes: int, nnz: int, rng, *, fold: float = 8.0,
                       markers: float = 0.05):
    """:func:`_counts` whose gene weights depend on the cell's group: each group (a cell type, or a
    (cell type, batch) pair) raises a random ``markers`` share of genes ``fold``-fold, in which genes
    a cell expresses and in their counts. The size of every cell (``nnz`` genes) stays the worst
    case; what changes is that labels, batches and the modalities of one cell carry a signal a
    model can learn, so a falling loss on these inputs means the job learns, not only that it runs
    (independent draws leave the loss at chance: ln(classes), or ln(batch) for InfoNCE).

    groups: (n_cells,) integer group of each cell. Returns CSR float32 (n_cells, n_genes)."""
    import scipy.sparse as sp

    order = np.argsort(groups, kind="stable")
    blocks = []
    for g in np.unique(groups):
        w = np.ones(n_genes)
        w[rng.choice(n_genes, max(1, int(markers * n_genes)), replace=False)] = fold
        blocks.append(_counts(int((groups == g).sum()), n_genes, nnz, rng, weights=w / w.sum()))
    return sp.vstack(blocks, format="csr")[np.argsort(order)]


def write_qc_shard(path: Path, n_cells: int, vocab, nnz: int, seed: int) -> None:
    """A QC shard (architecture.md "QC shards": var feature_id / feature_name, varm measured)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    w = np.exp(np.random.default_rng(12345).normal(0.0, 1.0, len(vocab)))
    X = _counts(n_cells, len(vocab), nnz, rng, weights=w / w.sum())
    var = pd.DataFrame({"feature_id": vocab["feature_id"].to_numpy(), "feature_name": vocab["feature_name"].to_numpy()},
                       index=vocab["feature_id"].to_numpy())
    a = ad.AnnData(X=X, obs=pd.DataFrame({"dataset_id": pd.Categorical(["rehearsal"] * n_cells)},
                                         index=[f"c{i}" for i in range(n_cells)]), var=var)
    a.varm["measured"] = np.ones((len(vocab), 1), dtype=bool)
    a.uns["cellmamba"] = {"measured_datasets": np.array(["rehearsal"])}
    tmp = path.with_name(path.name + ".part")
    a.write_h5ad(tmp)
    tmp.replace(path)


def build_corpus(work: Path, job: dict, n_cells: int, vocab, *, nnz: int) -> dict:
    """QC shard -> gene_stats.tsv -> token shard + corpus manifest, through the workflow's code."""
    from cellmamba.genestats import compute_gene_stats
    from cellmamba.tokenize import tokenize_h5ad, write_corpus_manifest

    tok = job["tokenizer"]
    d = work / f"corpus_{tok}_{nnz}_{n_cells}"
    manifest = d / "tokens" / "manifest.json"
    if not manifest.exists():
        d.mkdir(parents=True, exist_ok=True)
        qc = d / "qc.h5ad"
        write_qc_shard(qc, n_cells, vocab, nnz, seed=1)
        compute_gene_stats([qc], d / "gene_stats.tsv", target_sum=job["target_sum"])
        settings = {k: v for k, v in job["tokenize"].items() if k != "chunk_cells"}
        tokenize_h5ad(qc, d / "tokens" / "0", tokenizer=tok, config=settings,
                      gene_stats=d / "gene_stats.tsv" if tok == "rank" else None,
                      chunk_cells=job["tokenize"]["chunk_cells"])
        write_corpus_manifest([d / "tokens" / "0"], manifest)
    return {"corpus": manifest, "gene_stats": d / "gene_stats.tsv"}


def finetune_dataset(path: Path, vocab, *, n_genes: int, n_cells: int, task: str, n_query: int = 0,
                     density: float = 0.9, seed: int = 0) -> None:
    """A standard-schema dataset (what prepare_dataset writes): counts in X and layers['counts'],
    var index = Ensembl ids of the vocabulary, obs cell_type / batch (/ split)."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_cells + n_query
    cell_type, batch = rng.integers(0, 10, n), rng.integers(0, 2, n)
    X = _programmed_counts(2 * cell_type + batch, n_genes, int(round(density * n_genes)), rng)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{i}" for i in cell_type]),
                        "batch": pd.Categorical([f"b{i}" for i in batch])}, index=[f"cell{i}" for i in range(n)])
    if task == "annotation":
        obs["split"] = pd.Categorical(["reference"] * n_cells + ["query"] * n_query)
    var = pd.DataFrame(index=pd.Index(vocab["feature_id"].to_numpy()[:n_genes], name="gene_id"))
    var["gene_name"] = vocab["feature_name"].to_numpy()[:n_genes]
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.layers["counts"] = X.copy()
    a.uns["cellmamba"] = {"x_kind": "counts"}
    a.write_h5ad(path)


# ------------------------------------------------------------------------------------------ timing
class StepTimer:
    """Wraps the training loop's ``train_step`` (the one function every GPU job's loop calls per
    optimizer step): synchronised wall time, cells and tokens of its micro-batches, the loss."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def installed(self):
        import torch

        from cellmamba.train import loop

        inner = loop.train_step

        def timed(model, objective, batches, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = inner(model, objective, batches, **kw)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            counts = [loop._batch_counts(b) for b in batches]
            self.rows.append({"sec": time.perf_counter() - t0, "cells": sum(c[0] for c in counts),
                              "tokens": sum(c[1] for c in counts), "micro": len(batches),
                              "loss": float(out.get("loss", float("nan"))),
                              # the terms of an objective with a gradient-reversed adversary
                              # (integration): the encoder lowers ssl and raises adv, so their sum
                              # need not fall while both players learn
                              **{term: out.get(term) for term in TERMS}})
            return out

        loop.train_step = timed
        try:
            yield self
        finally:
            loop.train_step = inner


#: the terms recorded beside the loss where the objective reports them: integration's masked-gene /
#: masked-value loss and its reversed adversary; the multiome towers' InfoNCE (ln(batch) at chance)
#: and the fraction of cells whose nearest embedding of the other modality is their own
TERMS = ("ssl_loss", "adv_loss", "infonce", "retrieval_acc")


def _kernels() -> str:
    """mamba_ssm / causal_conv1d versions and whether the fused Mamba2 path is on."""
    import torch

    from cellmamba.models import _fused

    try:
        import causal_conv1d
        import mamba_ssm
    except ImportError:
        return "no mamba_ssm: PyTorch reference"
    fused = torch.cuda.is_available() and _fused.available(torch.empty(1, device="cuda"))
    return (f"mamba_ssm {mamba_ssm.__version__}, causal_conv1d {causal_conv1d.__version__}, "
            f"fused path {'on' if fused else 'off'}")


def _peak(device_name: str):
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def _summary(timer: StepTimer, warmup: int, n_params: int, device: str) -> dict:
    rows = timer.rows
    timed = rows[warmup:] if len(rows) > warmup else rows
    sec = float(np.median([r["sec"] for r in timed])) if timed else float("nan")
    tokens = float(np.median([r["tokens"] for r in timed])) if timed else float("nan")
    cells = float(np.median([r["cells"] for r in timed])) if timed else float("nan")
    peak = _peak(device)
    losses = [r["loss"] for r in rows]
    return {"steps_timed": len(timed), "sec_per_step": round(sec, 4), "tokens_per_s": round(tokens / sec),
            "cells_per_s": round(cells / sec, 1), "cells_per_step": int(cells),
            "micro_batch": int(cells // max(rows[0]["micro"], 1)) if rows else 0,
            "grad_accum": rows[0]["micro"] if rows else 0,
            "tokens_per_cell": round(tokens / max(cells, 1)),
            "mfu_lower_bound": round(6 * n_params * tokens / sec / peak, 4) if peak else "",
            "loss_first": round(float(np.mean(losses[:3])), 4) if losses else "",
            "loss_last": round(float(np.mean(losses[-3:])), 4) if losses else "",
            **{f"{term}_{end}": round(float(np.mean(vals)), 4) if vals else ""
               for term in TERMS
               for end, vals in (("first", [r[term] for r in rows[:3] if r[term] is not None]),
                                 ("last", [r[term] for r in rows[-3:] if r[term] is not None]))}}


# ------------------------------------------------------------------------------------------ jobs
def run_pretrain(job: dict, work: Path, steps: int, vocab) -> dict:
    import yaml

    from cellmamba.train.pretrain import PretrainConfig, loader_workers, run_pretraining

    planned = PretrainConfig.from_workflow(**job["params"]["settings"])
    configured = planned.max_steps
    # the loader workers the pretrain rule starts for the Slurm profile's cores (one GPU)
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    cpus = profile.get("set-resources", {}).get("pretrain", {}).get("cpus_per_task")
    cfg = dataclasses.replace(planned, max_steps=steps, warmup_steps=max(1, steps // 5), checkpoint_every=steps,
                              log_every=1, num_workers=min(loader_workers(cpus, 1), os.cpu_count() or 1))
    # enough cells that nearly every gene is detected somewhere: the rank tokenizer keeps only genes
    # with a corpus median, so a tiny starting corpus would shorten fine-tuning sequences
    cells = max(steps * cfg.batch_size * cfg.grad_accum + cfg.batch_size, MIN_CORPUS_CELLS)
    # every cell fills the context: the worst case for memory (binned adds <cls>)
    inputs = build_corpus(work, job, cells, vocab, nnz=cfg.context_length)
    out = work / f"{job['job'].replace('/', '_')}_steps{steps}"
    gene_sets = [str(REPO / p) for p in job["gene_sets"]] if cfg.recipe == "genemamba" and cfg.pathway_weight > 0 else []
    run_pretraining(inputs["corpus"], out, config=cfg, gene_stats=inputs["gene_stats"], gene_sets=gene_sets)
    return {"configured_steps": configured, "model_dir": out / "model", "vocabulary": inputs["gene_stats"]}


def run_finetune(job: dict, work: Path, steps: int, vocab, model_dir: Path, vocabulary: Path, *,
                 args_genes: int | None = None) -> dict:
    from cellmamba.tasks import FinetuneConfig
    from cellmamba.tasks.run import finetune_annotation_files, finetune_integration_files

    task = "annotation" if job["rule"] == "finetune_annotation" else "integration"
    s = dict(job["params"]["settings"])
    cfg = FinetuneConfig.from_dict(s)
    configured_epochs = cfg.epochs
    cfg = dataclasses.replace(cfg, epochs=1)
    # cells so that one epoch of the training share has `steps` steps
    n_train = steps * cfg.batch_size
    n_ref = int(math.ceil(n_train / (1 - cfg.valid_fraction)))
    datasets = job["datasets"]
    n_genes = args_genes or (SHAPES[datasets[0]]["genes"] if datasets[0] in SHAPES else 3000)
    out = work / job["job"].replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "dataset.h5ad"
    n_query = 2 * cfg.embed_batch_size if task == "annotation" else 0
    finetune_dataset(data, vocab, n_genes=n_genes, n_cells=n_ref, n_query=n_query, task=task)
    genes = job["params"].get("genes")
    if task == "annotation":
        finetune_annotation_files(data, model_dir, vocabulary, config=cfg, predictions=out / "predictions.csv",
                                  train_dir=out / "train", genes=genes)
    else:
        finetune_integration_files(data, model_dir, vocabulary, config=cfg, embedding=out / "embedding.h5ad",
                                   train_dir=out / "train", genes=genes)
    # the published cell numbers of each dataset the DAG runs this kind on
    proj = {}
    for name in datasets:
        sh = SHAPES.get(name, {})
        ref = sh.get("reference", sh.get("cells", 0))
        total = ref + sh.get("query", 0)
        n_tr = int(ref * (1 - cfg.valid_fraction))
        proj[name] = {"steps": configured_epochs * math.ceil(n_tr / cfg.batch_size),
                      "rest_cells": configured_epochs * (ref - n_tr) + total}
    return {"projection": proj, "rest_cells": (n_ref - int(n_ref * (1 - cfg.valid_fraction))) + n_ref + n_query}


def _pretrained(model: str, args, vocab, pretrained: dict) -> dict:
    """The model directory a fine-tuning job starts from: the pretrain row's of this run, else
    the same pretraining run for ``--init-steps`` steps (its export; not timed, no row)."""
    if model not in pretrained:
        job = next(j for j in args.plan_jobs if j["rule"] == "pretrain" and j["wildcards"]["model"] == model)
        print(f"== {job['job']} for {args.init_steps} step(s), as the starting model (no row)", flush=True)
        pretrained[model] = run_pretrain(job, args.work, args.init_steps, vocab)
    return pretrained[model]


def perturbation_dataset(path: Path, vocab, *, n_genes: int, n_targets: int, n_combos: int, cells_per_condition: int,
                         n_ctrl: int, seed: int = 0) -> None:
    """A Norman-layout dataset (obs condition: ctrl, A+ctrl, A+B; X = log1p values, every gene
    measured; var gene_name symbols, gene_id Ensembl ids) with targets among its genes."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    unique = vocab[~vocab["feature_name"].duplicated(keep=False)].iloc[:n_genes]  # symbols name genes uniquely
    symbols = unique["feature_name"].to_numpy().astype(str)
    targets = [g for g in symbols if g.isalnum()][:n_targets]
    pairs = set()
    while len(pairs) < n_combos:
        a, b = sorted(rng.choice(len(targets), 2, replace=False))
        pairs.add(f"{targets[a]}+{targets[b]}")
    conditions = ["ctrl"] * n_ctrl
    for c in [f"{t}+ctrl" for t in targets] + sorted(pairs):
        conditions += [c] * cells_per_condition
    n = len(conditions)
    X = _counts(n, n_genes, int(0.6 * n_genes), rng)
    X.data = np.log1p(X.data)
    var = pd.DataFrame({"gene_name": symbols}, index=pd.Index(unique["feature_id"].to_numpy(), name="gene_id"))
    a = ad.AnnData(X=X, obs=pd.DataFrame({"condition": pd.Categorical(conditions)}, index=[f"cell{i}" for i in range(n)]),
                   var=var)
    a.uns["cellmamba"] = {"x_kind": "other"}
    a.write_h5ad(path)


def run_perturbation_job(job: dict, work: Path, steps: int, vocab, model_dir: Path, vocabulary: Path, *,
                         args_genes: int | None = None) -> dict:
    from cellmamba.datasets.gears_split import make_split_file, read_split
    from cellmamba.tasks.perturb import PerturbConfig
    from cellmamba.tasks.run import finetune_perturbation_files

    cfg = PerturbConfig.from_dict(job["params"]["settings"])
    configured_epochs = cfg.epochs
    cfg = dataclasses.replace(cfg, epochs=1)
    out = work / job["job"].replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    data, split = out / "dataset.h5ad", out / "split.json"
    shape = SHAPES["norman"]
    # GEARS' simulation split trains on roughly half of the perturbed cells: 20 targets and 30
    # pairs of (steps x batch / 20) cells each give about `steps` steps per epoch. Few conditions
    # keep the prediction pass (pool_size controls for each test condition) short; its cost
    # enters the projection per cell predicted, so fewer conditions do not change the projection
    per = max(2, int(math.ceil(steps * cfg.batch_size / 20)))
    perturbation_dataset(data, vocab, n_genes=args_genes or shape["genes"], n_targets=20, n_combos=30, cells_per_condition=per,
                         n_ctrl=max(cfg.pool_size, 2 * cfg.batch_size))
    protocol = {"seed": 1, "train_gene_set_size": 0.75, "combo_seen2_train_frac": 0.75}
    make_split_file(data, split, reverse_genes=4, **protocol)
    finetune_perturbation_files(data, model_dir, vocabulary, split=split, config=cfg, predictions=out / "predictions.h5ad",
                                train_dir=out / "train")
    sp_ = read_split(split)
    import anndata as ad

    obs = ad.read_h5ad(data, backed="r").obs
    perturbed = int((obs["condition"] != "ctrl").sum())
    train_frac = float(obs["condition"].isin(sp_.train).sum()) / perturbed
    n_pert_full = shape["cells"] - shape["ctrl"]
    n_train_full = int(train_frac * n_pert_full)
    n_valid_full = int(float(obs["condition"].isin(sp_.val).sum()) / perturbed * n_pert_full)
    n_valid = int(obs["condition"].isin(sp_.val).sum())
    n_pred = len(sp_.test) if hasattr(sp_, "test") else 0
    return {"projection": {"norman": {"steps": configured_epochs * math.ceil(n_train_full / cfg.batch_size),
                                      "rest_cells": configured_epochs * n_valid_full}},
            "rest_cells": n_valid + n_pred * cfg.pool_size}


def multiomics_dataset(path: Path, *, n_cells: int, modalities: dict, seed: int = 0) -> None:
    """A paired dataset in the read_bmmc layout: var modality (rna / protein / atac), var gene_id
    (rna: Ensembl ids with a genomic position), peak names chrN-start-end (atac), counts."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    pos = pd.read_csv(REPO / "resources/genes/human_gene_positions_hg38.tsv.gz", sep="\t", dtype=str)
    pos = pos[pos["ensembl_ids"].notna() & ~pos["ensembl_ids"].str.contains(r"\|", na=True)]
    cell_type, batch = rng.integers(0, 10, n_cells), rng.integers(0, 2, n_cells)
    blocks, vars_ = [], []
    for m, n in modalities.items():
        density = {"rna": 0.08, "protein": 1.0, "atac": 0.03}[m]
        # every modality of a cell follows its cell type: what the two towers can align
        blocks.append(_programmed_counts(cell_type, n, max(1, int(density * n)), rng))
        if m == "rna":
            ids = pos["ensembl_ids"].to_numpy()[:n]
            vars_.append(pd.DataFrame({"modality": m, "gene_id": ids}, index=pos["symbol"].to_numpy()[:n]))
        elif m == "atac":
            # distinct peaks, as in a real peak set (random starts collide: 8 of 116,490 did)
            slot = rng.choice(22 * 99_990, n, replace=False)
            chrom, start = slot // 99_990 + 1, 10_000 + (slot % 99_990) * 1_000
            names = [f"chr{c}-{s}-{s + 500}" for c, s in zip(chrom, start)]
            vars_.append(pd.DataFrame({"modality": m, "gene_id": ""}, index=names))
        else:
            vars_.append(pd.DataFrame({"modality": m, "gene_id": ""}, index=[f"p_ADT{i}" for i in range(n)]))
    var = pd.concat(vars_)
    var.index = pd.Index([f"{m}:{i}" if dup else i for i, m, dup in zip(var.index, var["modality"],
                                                                       var.index.duplicated(keep=False))])
    X = sp.hstack(blocks, format="csr")
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{i}" for i in cell_type]),
                        "batch": pd.Categorical(np.array(["s1d1", "s1d2"])[batch])},
                       index=[f"cell{i}" for i in range(n_cells)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.layers["counts"] = X.copy()
    a.write_h5ad(path)


def _gene_positions(job: dict, work: Path) -> Path:
    """The rule's gene position table: GENCODE 48's order built as rule gene_positions builds it
    (once per work directory), or the configured file (the UCSC table in plans before 2026-12-03)."""
    from cellmamba.tokenize.annotation import write_gene_positions

    path = job.get("positions", "resources/genes/human_gene_positions_hg38.tsv.gz")
    if not path.startswith("results/"):
        return REPO / path
    out = work / path
    if not out.exists():
        inputs = job["positions_inputs"]
        write_gene_positions(REPO / inputs["gene_table"], REPO / inputs["anchors"], out)
    return out


def run_multiomics_job(job: dict, work: Path, steps: int, *, args_genes: int | None = None,
                       max_cells: int | None = None, warmup_steps: int | None = None) -> dict:
    """``steps`` optimizer steps of the two-tower job on generated cells: ``steps x batch`` cells in
    one epoch, or, with ``max_cells``, at most that many cells over as many epochs as the steps
    need (the embedding pass, timed per cell, then covers fewer cells). The warm-up is the job's
    ``warmup_fraction`` of these steps, or ``warmup_steps`` steps (e.g. the configured job's: 5% of
    its 5,400)."""
    from cellmamba.tasks.multiomics import MultiomicsConfig
    from cellmamba.tasks.run import train_multiomics_files

    cfg = MultiomicsConfig.from_dict(job["params"]["settings"])
    configured_epochs = cfg.epochs
    n_cells = steps * cfg.batch_size
    if max_cells is not None and max_cells < n_cells:
        n_cells = max(cfg.batch_size, max_cells // cfg.batch_size * cfg.batch_size)
    epochs = -(-steps * cfg.batch_size // n_cells)
    cfg = dataclasses.replace(cfg, epochs=epochs)
    if warmup_steps is not None:
        total = epochs * (n_cells // cfg.batch_size)
        cfg = dataclasses.replace(cfg, warmup_fraction=min(1.0, (warmup_steps + 0.5) / total))  # int() in the loop
    dataset = job["wildcards"]["dataset"]
    shape = SHAPES.get(dataset, SHAPES["bmmc_multiome"])  # the demo's simulated multiome: BMMC's modalities
    mods = {m: min(shape[m], args_genes or shape[m]) for m in ("rna", "protein", "atac") if m in shape}
    out = work / job["job"].replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "dataset.h5ad"
    multiomics_dataset(data, n_cells=n_cells, modalities=mods)
    train_multiomics_files(data, _gene_positions(job, work), config=cfg,
                           embedding=out / "embedding.h5ad", train_dir=out / "train", method=job["wildcards"]["method"])
    return {"projection": {dataset: {"steps": configured_epochs * (shape["cells"] // min(cfg.batch_size, shape["cells"])),
                                     "rest_cells": 2 * shape["cells"]}},
            "rest_cells": 2 * n_cells, "model_dir": out / "train" / "model"}


def run_job(job: dict, args, vocab, pretrained: dict, device: str) -> dict:
    import torch

    row = {"job": job["job"], "rule": job["rule"], "model": job["wildcards"].get("model") or
           job["wildcards"].get("method"), "device": device, "date": dt.date.today().isoformat(),
           "code": args.code, "kernels": args.kernels, "jobs_in_dag": job.get("jobs_in_dag", 1),
           "overrides": job.get("overrides", "")}
    timer = StepTimer()
    if job["rule"] in ("finetune_annotation", "finetune_integration", "finetune_perturbation"):
        try:
            _pretrained(row["model"], args, vocab, pretrained)  # before the timer and the memory count
        except Exception as exc:
            traceback.print_exc()
            return {**row, "status": "failed", "error": f"starting model: {type(exc).__name__}: {str(exc)[:300]}"}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with timer.installed():
            if job["rule"] == "pretrain":
                info = run_pretrain(job, args.work, args.steps, vocab)
                pretrained[row["model"]] = info
                model_dir = info["model_dir"]
            elif job["rule"] in ("finetune_annotation", "finetune_integration"):
                base = _pretrained(row["model"], args, vocab, pretrained)
                info = run_finetune(job, args.work, args.steps, vocab, base["model_dir"], base["vocabulary"],
                                    args_genes=args.dataset_genes)
                model_dir = base["model_dir"]
            elif job["rule"] == "finetune_perturbation":
                base = _pretrained(row["model"], args, vocab, pretrained)
                info = run_perturbation_job(job, args.work, args.steps, vocab, base["model_dir"], base["vocabulary"],
                                            args_genes=args.dataset_genes)
                model_dir = base["model_dir"]
            else:
                info = run_multiomics_job(job, args.work, args.steps, args_genes=args.dataset_genes,
                                          max_cells=args.max_cells, warmup_steps=args.multiomics_warmup)
                model_dir = None
        wall = time.perf_counter() - t0
        from cellmamba.embedding import checkpoint_info
        from cellmamba.metrics.tables import parameter_flags

        n_params = (checkpoint_info(model_dir)["n_parameters"] if model_dir is not None else  # both towers
                    parameter_flags(args.work / job["job"].replace("/", "_") / "train")["n_params"])
        row.update(_summary(timer, args.warmup, n_params, device), params=n_params, status="ok")
        train_s = sum(r["sec"] for r in timer.rows)
        rest = max(wall - train_s, 0.0)
        if job["rule"] == "pretrain":
            row.update(rest_s=round(rest, 1), rest_cells="", rest_s_per_cell="", configured_steps=info["configured_steps"],
                       projected_dataset="corpus")
            row["projected_h"] = round(info["configured_steps"] * row["sec_per_step"] / 3600, 2)
            row["projected_h_all"] = row["projected_h"]
        else:
            per_cell = rest / max(info["rest_cells"], 1)
            proj = {k: v["steps"] * row["sec_per_step"] + v["rest_cells"] * per_cell for k, v in info["projection"].items()}
            worst = max(proj, key=proj.get)
            seeds = job.get("jobs_in_dag", 1) / max(len(proj), 1)
            row.update(rest_s=round(rest, 1), rest_cells=info["rest_cells"], rest_s_per_cell=round(per_cell, 5),
                       configured_steps=info["projection"][worst]["steps"], projected_dataset=worst,
                       projected_h=round(proj[worst] / 3600, 2),
                       projected_h_all=round(sum(proj.values()) * seeds / 3600, 2))
    except Exception as exc:  # a failed job is a row, not the end of the rehearsal
        traceback.print_exc()
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        row.update(status="oom" if oom else "failed", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                   steps_timed=len(timer.rows))
    import resource

    # the process' peak resident memory so far (Linux: KiB): an upper bound for this job's host memory
    row["host_peak_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if torch.cuda.is_available():
        row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    # the line is on the allocation peak; reserved memory also holds cached free blocks, which the
    # allocator releases (and retries) before it reports an out-of-memory error
    if row.get("status") == "ok" and isinstance(row.get("peak_alloc_gib"), float) and \
            row["peak_alloc_gib"] > MEMORY_LINE_GIB:
        row["status"] = "over_line"
    return row


def apply_overrides(job: dict, overrides: list[str]) -> dict:
    """A copy of ``job`` whose ``params.settings`` take ``KEY=VALUE`` (KEY a dotted path to a key the
    settings already have, VALUE parsed as YAML): a variant of the configured job, named in the row."""
    import copy

    import yaml

    if not overrides:
        return job
    job = copy.deepcopy(job)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node, parts = job["params"]["settings"], key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            raise SystemExit(f"--set {item!r}: job {job['job']} has no setting {key!r} "
                             f"(params.settings keys: {sorted(job['params']['settings'])})")
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node[parts[-1]] = value
    job["overrides"] = " ".join(overrides)
    return job


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    tmp.replace(path)


def run(args) -> Path:
    import re

    import torch

    from cellmamba.runlog import setup_logging

    setup_logging(None)
    plan = json.loads(Path(args.plan).read_text())
    args.plan_jobs = plan["jobs"]
    jobs = [j for j in plan["jobs"] if re.search(args.only, j["job"])] if args.only else plan["jobs"]
    jobs = [apply_overrides(j, args.overrides) for j in jobs]
    # each pretrained model, then the jobs that fine-tune it (a killed command keeps whole groups)
    models = [j["wildcards"]["model"] for j in plan["jobs"] if j["rule"] == "pretrain"]
    group = {m: i for i, m in enumerate(models)}
    jobs.sort(key=lambda j: group.get(j["wildcards"].get("model") or j["wildcards"].get("method"), len(models)))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if args.memory_cap_gib is not None:
        # a larger card held to a smaller one's memory: the caching allocator frees its cache and
        # retries before it fails, so an OOM under the cap is what that card would meet,
        # fragmentation included (the allocation peak alone does not show that)
        if not torch.cuda.is_available():
            raise SystemExit("--memory-cap-gib: no CUDA device here to cap")
        total = torch.cuda.get_device_properties(0).total_memory
        if args.memory_cap_gib * 2**30 > total:
            raise SystemExit(f"--memory-cap-gib {args.memory_cap_gib}: above this device's "
                             f"{total / 2**30:.1f} GiB")
        torch.cuda.set_per_process_memory_fraction(args.memory_cap_gib * 2**30 / total)
        print(f"memory cap: {args.memory_cap_gib} GiB of {total / 2**30:.1f}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"rehearsal_{device.replace(' ', '_')}_{dt.date.today().isoformat()}.csv"
    path = args.out / name
    vocab = vocabulary_table(args.vocab_genes)
    args.kernels = _kernels()
    print("kernels:", args.kernels, flush=True)
    rows, pretrained = [], {}
    for job in jobs:
        print(f"== {job['job']}", flush=True)
        rows.append(run_job(job, args, vocab, pretrained, device))
        print(json.dumps(rows[-1]), flush=True)
        write_rows(path, rows)  # after every job: a killed command keeps what it measured
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("plan", help="resolve the GPU jobs of a config (needs snakemake)")
    pp.add_argument("--configfile", action="append", required=True, help="as snakemake --configfile")
    pp.add_argument("--out", type=Path, required=True)
    pr = sub.add_parser("run", help="run the plan's jobs")
    pr.add_argument("--plan", type=Path, required=True)
    pr.add_argument("--work", type=Path, required=True)
    pr.add_argument("--out", type=Path, required=True, help="folder of the CSV")
    pr.add_argument("--name", default=None, help="CSV name (default rehearsal_<device>_<date>.csv)")
    pr.add_argument("--only", default=None, help="regex on job names")
    pr.add_argument("--steps", type=int, default=24, help="optimizer steps per job (>= warmup + 20 to time)")
    pr.add_argument("--init-steps", type=int, default=1, help="pretraining steps of a starting model whose "
                    "pretrain row is not part of this run")
    pr.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    pr.add_argument("--vocab-genes", type=int, default=SHAPES["vocabulary"]["genes"])
    pr.add_argument("--dataset-genes", type=int, default=None, help="genes of generated fine-tuning data "
                    "(default: the published number; tests use fewer)")
    pr.add_argument("--memory-cap-gib", type=float, default=None, help="hold the GPU to this much memory "
                    "(e.g. 74.5 = an 80 GB card): an OOM row is then one that card would have")
    pr.add_argument("--max-cells", type=int, default=None, help="train_multiomics: at most this many generated "
                    "cells, over several epochs (bounds the embedding pass of a long rehearsal)")
    pr.add_argument("--multiomics-warmup", type=int, default=None, help="train_multiomics: warm-up steps (default "
                    "the job's warmup_fraction of the rehearsed steps; 270 = the configured job's)")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of every selected job (repeatable; KEY a dotted path in the "
                    "job's params.settings, VALUE read as YAML), e.g. --set lr=1e-4 --set precision=fp32; "
                    "the row records it (column overrides)")
    pr.add_argument("--code", default=os.environ.get("CELLMAMBA_CODE", ""), help="git commit of the code")
    args = p.parse_args(argv)
    if args.cmd == "plan":
        plan = make_plan(args.configfile)
        args.out.write_text(json.dumps(plan, indent=1) + "\n")
        print(f"{len(plan['jobs'])} GPU job kinds -> {args.out}")
    else:
        print(run(args))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()

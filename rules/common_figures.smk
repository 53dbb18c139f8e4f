# Helpers of the figure rules (rules/figures.smk); no rules here.

import os

FIGURES = "results/figures"
FIGURE_TASKS = ("annotation", "integration", "perturbation", "multiomics")
#: benchmark CSVs committed with the repository (measured on a lent GPU, see benchmarks/)
GPU_BENCHMARKS = {"throughput": "benchmarks/results/gpu_throughput.csv", "tasks": "benchmarks/results/gpu_tasks.csv"}
#: the multi-omics methods' wall time and memory vs cells (benchmarks/bench_scalability.py), where measured
SCALABILITY_BENCHMARK = "benchmarks/results/scalability.csv"


def _both(stem):
    return [f"{stem}.png", f"{stem}.pdf"]


def figures():
    """Every figure (PNG + PDF) and report table page the configured run can draw."""
    out = []
    for task in FIGURE_TASKS:
        if task_datasets(task):
            out += _both(f"{FIGURES}/metrics_{task}") + [f"{FIGURES}/table_{task}.html"]
    for d in task_datasets("annotation"):
        out += _both(f"{FIGURES}/confusion_{d}")
    for d in task_datasets("integration"):
        for v in variants(d):
            out += _both(f"{FIGURES}/umap_integration_{d}_{v}")
    for d in task_datasets("perturbation"):
        out += _both(f"{FIGURES}/perturbation_scatter_{d}")
    for d in task_datasets("multiomics"):
        out += _both(f"{FIGURES}/umap_multiomics_{d}_paired")
    if pretrain_models():
        out += _both(f"{FIGURES}/pretrain_loss")
    if all(os.path.exists(p) for p in GPU_BENCHMARKS.values()):
        out += _both(f"{FIGURES}/gpu_throughput") + _both(f"{FIGURES}/gpu_tasks")
    if task_datasets("multiomics") and os.path.exists(SCALABILITY_BENCHMARK):
        out += _both(f"{FIGURES}/scalability")
    return out


def _first_seed():
    """Figures that show one run per method (UMAPs, scatter, confusion) show the first seed's."""
    return EVAL["seeds"][0]


def metric_bar_inputs(wildcards):
    runs = {
        "annotation": annotation_runs,
        "integration": integration_runs,
        "perturbation": perturbation_runs,
        "multiomics": multiomics_runs,
    }
    return runs[wildcards.task]()


def umap_inputs(wildcards):
    """The first seed's embedding of every method of one dataset (x variant)."""
    d, s = wildcards.dataset, _first_seed()
    if wildcards.task == "integration":
        methods = list(EVAL["integration"]["baselines"]) + finetuned_methods()
        return [f"results/integration/{d}/{wildcards.variant}/{m}/seed{s}/embedding.h5ad" for m in methods]
    return [f"results/multiomics/{d}/{m}/seed{s}/embedding.h5ad" for m in multiomics_dataset_methods(d)]


def perturbation_scatter_inputs(wildcards):
    d, s = wildcards.dataset, _first_seed()
    methods = list(EVAL["perturbation"]["baselines"]) + finetuned_methods()
    return {"deltas": [f"results/perturbation/{d}/{m}/seed{s}/deltas.h5ad" for m in methods]}


def confusion_inputs(wildcards):
    methods = list(EVAL["annotation"]["baselines"]) + finetuned_methods()
    return [f"results/annotation/{wildcards.dataset}/{m}/seed{_first_seed()}/confusion.csv" for m in methods]


def pretrain_metric_files():
    return expand("results/pretrain/{model}/metrics.csv", model=pretrain_models())


def figure_simulated(wildcards):
    return bool(dataset_entry(wildcards.dataset).get("simulated", False))


def umap_title(wildcards):
    if wildcards.task == "integration":
        return f"{wildcards.dataset} · {wildcards.variant} genes: batch integration, seed {_first_seed()}"
    return f"{wildcards.dataset}: multi-omics integration, seed {_first_seed()}"

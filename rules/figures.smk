# Figures and report pages of every benchmark task (issue 7), drawn by cellmamba.plots from the
# per-run outputs: snakemake results/figures/metrics_annotation.png ; snakemake --report report.html
# Included after the other rule files: uses their helpers (task_datasets, variants, *_runs, EVAL ...).


rule plot_metric_bars:
    """Bars of each task's headline metrics: mean over seeds per method, sd, every seed as a dot."""
    input:
        metric_bar_inputs,
    output:
        png=report(
            f"{FIGURES}/metrics_{{task}}.png",
            caption="../report/metric_bars.rst",
            category="{task}",
            subcategory="metrics",
            labels={"figure": "metrics", "task": "{task}"},
        ),
        pdf=f"{FIGURES}/metrics_{{task}}.pdf",
    log:
        "logs/plot_metric_bars/{task}.log",
    benchmark:
        "logs/plot_metric_bars/{task}.benchmark.tsv"
    wildcard_constraints:
        task="|".join(FIGURE_TASKS),
    conda:
        "../envs/eval.yaml"
    params:
        task="{task}",
    script:
        "../workflow_scripts/plot_metric_bars.py"


rule plot_umaps:
    """UMAPs of one dataset's embeddings: methods as columns, coloured by cell type and batch / modality."""
    input:
        embeddings=umap_inputs,
    output:
        png=report(
            f"{FIGURES}/umap_{{task}}_{{dataset}}_{{variant}}.png",
            caption="../report/umap.rst",
            category="{task}",
            subcategory="UMAP",
            labels={"figure": "UMAP", "dataset": "{dataset}", "genes": "{variant}"},
        ),
        pdf=f"{FIGURES}/umap_{{task}}_{{dataset}}_{{variant}}.pdf",
    log:
        "logs/plot_umaps/{task}_{dataset}_{variant}.log",
    benchmark:
        "logs/plot_umaps/{task}_{dataset}_{variant}.benchmark.tsv"
    wildcard_constraints:
        task="integration|multiomics",
        variant="protocol|all_genes|paired",
    conda:
        "../envs/eval.yaml"
    params:
        title=umap_title,
        simulated=figure_simulated,
        seed=0,
    script:
        "../workflow_scripts/plot_umaps.py"


rule plot_perturbation_scatter:
    """Predicted vs measured change from the control mean for a few test conditions x methods."""
    input:
        unpack(perturbation_scatter_inputs),
    output:
        png=report(
            f"{FIGURES}/perturbation_scatter_{{dataset}}.png",
            caption="../report/perturbation_scatter.rst",
            category="perturbation",
            subcategory="predicted vs measured",
            labels={"figure": "scatter", "dataset": "{dataset}"},
        ),
        pdf=f"{FIGURES}/perturbation_scatter_{{dataset}}.pdf",
    log:
        "logs/plot_perturbation_scatter/{dataset}.log",
    benchmark:
        "logs/plot_perturbation_scatter/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        n_conditions=4,
    script:
        "../workflow_scripts/plot_perturbation_scatter.py"


rule plot_confusion:
    """Row-normalised confusion matrices of one annotation dataset, one panel per method."""
    input:
        confusion=confusion_inputs,
    output:
        png=report(
            f"{FIGURES}/confusion_{{dataset}}.png",
            caption="../report/confusion.rst",
            category="annotation",
            subcategory="confusion matrices",
            labels={"figure": "confusion", "dataset": "{dataset}"},
        ),
        pdf=f"{FIGURES}/confusion_{{dataset}}.pdf",
    log:
        "logs/plot_confusion/{dataset}.log",
    benchmark:
        "logs/plot_confusion/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        title="{dataset}",
        simulated=figure_simulated,
    script:
        "../workflow_scripts/plot_confusion.py"


rule plot_loss_curves:
    """Pretraining loss vs step, one panel per recipe (Mamba and its Transformer peer)."""
    input:
        metrics=pretrain_metric_files(),
    output:
        png=report(
            f"{FIGURES}/pretrain_loss.png",
            caption="../report/loss_curves.rst",
            category="pretraining",
            subcategory="loss",
            labels={"figure": "pretraining loss"},
        ),
        pdf=f"{FIGURES}/pretrain_loss.pdf",
    log:
        "logs/plot_loss_curves.log",
    benchmark:
        "logs/plot_loss_curves.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_loss_curves.py"


rule plot_throughput:
    """GPU throughput and peak memory vs context length, and per task (benchmarks/results)."""
    input:
        throughput=GPU_BENCHMARKS["throughput"],
        tasks=GPU_BENCHMARKS["tasks"],
    output:
        throughput_png=report(
            f"{FIGURES}/gpu_throughput.png",
            caption="../report/throughput.rst",
            category="performance",
            subcategory="GPU",
            labels={"figure": "context length"},
        ),
        throughput_pdf=f"{FIGURES}/gpu_throughput.pdf",
        tasks_png=report(
            f"{FIGURES}/gpu_tasks.png",
            caption="../report/task_throughput.rst",
            category="performance",
            subcategory="GPU",
            labels={"figure": "tasks"},
        ),
        tasks_pdf=f"{FIGURES}/gpu_tasks.pdf",
    log:
        "logs/plot_throughput.log",
    benchmark:
        "logs/plot_throughput.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_throughput.py"


rule plot_scalability:
    """The multi-omics methods' wall time and peak memory vs cells (benchmarks/results)."""
    input:
        csv=SCALABILITY_BENCHMARK,
    output:
        png=report(
            f"{FIGURES}/scalability.png",
            caption="../report/scalability.rst",
            category="performance",
            subcategory="scalability",
            labels={"figure": "cells"},
        ),
        pdf=f"{FIGURES}/scalability.pdf",
    log:
        "logs/plot_scalability.log",
    benchmark:
        "logs/plot_scalability.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_scalability.py"


rule table_report:
    """A benchmark table (results/tables/<task>.md) as an HTML page for the workflow report."""
    input:
        md="results/tables/{task}.md",
    output:
        html=report(
            f"{FIGURES}/table_{{task}}.html",
            caption="../report/table.rst",
            category="{task}",
            subcategory="table",
            labels={"figure": "table", "task": "{task}"},
        ),
    log:
        "logs/table_report/{task}.log",
    benchmark:
        "logs/table_report/{task}.benchmark.tsv"
    wildcard_constraints:
        task="|".join(FIGURE_TASKS),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/table_report.py"

# Metrics of every run (classification; scib) and the benchmark tables, each regenerable alone:
#   snakemake results/tables/annotation.md


rule score_annotation:
    """Accuracy, macro precision / recall / F1 on the query split; confusion matrix."""
    input:
        predictions="results/annotation/{dataset}/{method}/seed{seed}/predictions.csv",
    output:
        metrics="results/annotation/{dataset}/{method}/seed{seed}/metrics.csv",
        confusion="results/annotation/{dataset}/{method}/seed{seed}/confusion.csv",
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    log:
        "logs/score_annotation/{dataset}/{method}/seed{seed}.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/score_annotation.py"


rule score_integration:
    """scib metrics of one embedding (AvgBIO, AvgBATCH and their parts)."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
        embedding="results/integration/{dataset}/{variant}/{method}/seed{seed}/embedding.h5ad",
    output:
        metrics="results/integration/{dataset}/{variant}/{method}/seed{seed}/metrics.csv",
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    log:
        "logs/score_integration/{dataset}/{variant}/{method}/seed{seed}.log",
    benchmark:
        "logs/score_integration/{dataset}/{variant}/{method}/seed{seed}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/score_integration.py"


rule annotation_table:
    """results/tables/annotation.{csv,md}: method x dataset x metric, mean and spread over seeds."""
    input:
        annotation_runs(),
    output:
        csv="results/tables/annotation.csv",
        md="results/tables/annotation.md",
    params:
        task="annotation",
        title="Cell-type annotation (query split)",
    log:
        "logs/annotation_table.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/make_table.py"


rule integration_table:
    """results/tables/integration.{csv,md}: method x dataset x metric, mean and spread over seeds."""
    input:
        integration_runs(),
    output:
        csv="results/tables/integration.csv",
        md="results/tables/integration.md",
    params:
        task="integration",
        title="Batch integration (scib, all cells)",
    log:
        "logs/integration_table.log",
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/make_table.py"

# Metrics of every run (classification; scib) and the benchmark tables, each regenerable alone:
#   snakemake results/tables/annotation.md


rule score_annotation:
    """Accuracy, macro precision / recall / F1 on the query split; confusion matrix."""
    input:
        unpack(score_train("annotation")),
        predictions="results/annotation/{dataset}/{method}/seed{seed}/predictions.csv",
    output:
        metrics="results/annotation/{dataset}/{method}/seed{seed}/metrics.csv",
        confusion="results/annotation/{dataset}/{method}/seed{seed}/confusion.csv",
    log:
        "logs/score_annotation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/score_annotation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    script:
        "../workflow_scripts/score_annotation.py"


rule score_integration:
    """scib metrics of one embedding (AvgBIO, AvgBATCH and their parts)."""
    input:
        unpack(score_train("integration")),
        dataset="results/datasets/{dataset}.h5ad",
        embedding="results/integration/{dataset}/{variant}/{method}/seed{seed}/embedding.h5ad",
    output:
        metrics="results/integration/{dataset}/{variant}/{method}/seed{seed}/metrics.csv",
    log:
        "logs/score_integration/{dataset}/{variant}/{method}/seed{seed}.log",
    benchmark:
        "logs/score_integration/{dataset}/{variant}/{method}/seed{seed}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    script:
        "../workflow_scripts/score_integration.py"


rule annotation_table:
    """results/tables/annotation.{csv,md}: method x dataset x metric, mean and spread over seeds."""
    input:
        annotation_runs(),
    output:
        csv="results/tables/annotation.csv",
        md="results/tables/annotation.md",
    log:
        "logs/annotation_table.log",
    benchmark:
        "logs/annotation_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="annotation",
        title="Cell-type annotation (query split)",
    script:
        "../workflow_scripts/make_table.py"


rule integration_table:
    """results/tables/integration.{csv,md}: method x dataset x metric, mean and spread over seeds."""
    input:
        integration_runs(),
    output:
        csv="results/tables/integration.csv",
        md="results/tables/integration.md",
    log:
        "logs/integration_table.log",
    benchmark:
        "logs/integration_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="integration",
        title="Batch integration (scib, all cells)",
    script:
        "../workflow_scripts/make_table.py"


rule score_perturbation:
    """Pearson delta (all genes, top-20 DE), MSE, overall and per GEARS subgroup; reverse
    perturbation top-k retrieval (k = 1..8) on the gene grid."""
    input:
        unpack(score_train("perturbation")),
        unpack(perturbation_inputs),
        predictions="results/perturbation/{dataset}/{method}/seed{seed}/predictions.h5ad",
    output:
        metrics="results/perturbation/{dataset}/{method}/seed{seed}/metrics.csv",
        per_condition="results/perturbation/{dataset}/{method}/seed{seed}/per_condition.csv",
        deltas="results/perturbation/{dataset}/{method}/seed{seed}/deltas.h5ad",
    log:
        "logs/score_perturbation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/score_perturbation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    script:
        "../workflow_scripts/score_perturbation.py"


rule score_multiomics:
    """FOSCTTM, omics mixing entropy, ARI / NMI of the joint embedding, label transfer."""
    input:
        unpack(score_train("multiomics")),
        embedding="results/multiomics/{dataset}/{method}/seed{seed}/embedding.h5ad",
    output:
        metrics="results/multiomics/{dataset}/{method}/seed{seed}/metrics.csv",
    log:
        "logs/score_multiomics/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/score_multiomics/{dataset}/{method}/seed{seed}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        dataset="{dataset}",
        method="{method}",
        seed=seed_param,
        extra=score_extra,
    script:
        "../workflow_scripts/score_multiomics.py"


rule perturbation_table:
    """results/tables/perturbation.{csv,md}: method x subgroup x metric, and reverse perturbation."""
    input:
        perturbation_runs(),
    output:
        csv="results/tables/perturbation.csv",
        md="results/tables/perturbation.md",
    log:
        "logs/perturbation_table.log",
    benchmark:
        "logs/perturbation_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="perturbation",
        also=["reverse_perturbation"],
        title="Perturbation prediction (GEARS simulation split, test conditions)",
    script:
        "../workflow_scripts/make_table.py"


rule multiomics_table:
    """results/tables/multiomics.{csv,md}: method x metric, mean and spread over seeds."""
    input:
        multiomics_runs(),
    output:
        csv="results/tables/multiomics.csv",
        md="results/tables/multiomics.md",
    log:
        "logs/multiomics_table.log",
    benchmark:
        "logs/multiomics_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="multiomics",
        title="Multi-omics integration (paired modalities, all cells)",
    script:
        "../workflow_scripts/make_table.py"

# Simple baselines, first-class methods on the same cells and splits as the models.


rule baseline_annotation:
    """Logistic regression on log-normalised genes, or kNN on PCA: reference -> query."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
    output:
        predictions="results/annotation/{dataset}/{method}/seed{seed}/predictions.csv",
    log:
        "logs/baseline_annotation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/baseline_annotation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(ANNOTATION_BASELINES),
    conda:
        "../envs/eval.yaml"
    params:
        method="{method}",
        seed=seed_param,
        settings=baseline_settings,
    script:
        "../workflow_scripts/baseline_annotation.py"


rule baseline_integration:
    """Unintegrated PCA, Harmony or scVI embedding of every cell."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
    output:
        embedding="results/integration/{dataset}/{variant}/{method}/seed{seed}/embedding.h5ad",
    log:
        "logs/baseline_integration/{dataset}/{variant}/{method}/seed{seed}.log",
    benchmark:
        "logs/baseline_integration/{dataset}/{variant}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(INTEGRATION_BASELINES),
    conda:
        "../envs/eval.yaml"
    params:
        method="{method}",
        seed=seed_param,
        settings=baseline_settings,
        genes=gene_protocol,
    script:
        "../workflow_scripts/baseline_integration.py"


rule baseline_perturbation:
    """No change (control mean), mean of the training perturbations, or the additive model,
    on the same split and for the same conditions as the models."""
    input:
        unpack(perturbation_inputs),
    output:
        predictions="results/perturbation/{dataset}/{method}/seed{seed}/predictions.h5ad",
    log:
        "logs/baseline_perturbation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/baseline_perturbation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(PERTURBATION_BASELINES),
    conda:
        "../envs/eval.yaml"
    params:
        method="{method}",
        seed=seed_param,
    script:
        "../workflow_scripts/baseline_perturbation.py"


rule baseline_multiomics:
    """PCA + CCA, MultiVI (RNA + ATAC: one latent per modality) or totalVI (RNA + protein: one
    joint latent per cell, a joint file) of the paired cells."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
    output:
        embedding="results/multiomics/{dataset}/{method}/seed{seed}/embedding.h5ad",
    log:
        "logs/baseline_multiomics/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/baseline_multiomics/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(MULTIOMICS_BASELINES),
    conda:
        "../envs/eval.yaml"
    params:
        method="{method}",
        seed=seed_param,
        settings=baseline_settings,
    script:
        "../workflow_scripts/baseline_multiomics.py"

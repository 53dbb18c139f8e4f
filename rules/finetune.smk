# Fine-tuning of every pretrained model (each recipe and its Transformer peer) per dataset and
# seed. GPUs come from the profile (set-resources finetune_* gpu: 1).


rule finetune_annotation:
    """Classifier fine-tuning on the reference split, predictions for the query split."""
    input:
        unpack(finetune_inputs),
    output:
        predictions="results/annotation/{dataset}/{method}/seed{seed}/predictions.csv",
        train=directory("results/annotation/{dataset}/{method}/seed{seed}/train"),
    log:
        "logs/finetune_annotation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/finetune_annotation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(FINETUNE_METHODS),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        settings=finetune_settings("annotation"),
        gene_overlap=gene_overlap_settings(),
        genes={"n_hvg": None, "min_counts": 0},
    script:
        "../workflow_scripts/finetune_annotation.py"


rule finetune_integration:
    """Masked-objective + adversarial fine-tuning on all cells; cell embeddings to obsm['X_emb']."""
    input:
        unpack(finetune_inputs),
    output:
        embedding="results/integration/{dataset}/{variant}/{method}/seed{seed}/embedding.h5ad",
        train=directory("results/integration/{dataset}/{variant}/{method}/seed{seed}/train"),
    log:
        "logs/finetune_integration/{dataset}/{variant}/{method}/seed{seed}.log",
    benchmark:
        "logs/finetune_integration/{dataset}/{variant}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(FINETUNE_METHODS),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        settings=finetune_settings("integration"),
        gene_overlap=gene_overlap_settings(),
        genes=gene_protocol,
    script:
        "../workflow_scripts/finetune_integration.py"


rule finetune_perturbation:
    """Control cell in, perturbed cell out (perturbation flags on gene tokens); predicted mean
    profiles of the test conditions and of the reverse-perturbation candidates."""
    input:
        unpack(finetune_inputs),
        split="results/perturbation/{dataset}/split.json",
    output:
        predictions="results/perturbation/{dataset}/{method}/seed{seed}/predictions.h5ad",
        train=directory("results/perturbation/{dataset}/{method}/seed{seed}/train"),
    log:
        "logs/finetune_perturbation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/finetune_perturbation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(FINETUNE_METHODS),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        settings=finetune_settings("perturbation"),
        gene_overlap=gene_overlap_settings(),
    script:
        "../workflow_scripts/finetune_perturbation.py"


rule train_multiomics:
    """scmamba: one patch-token tower per modality (features in genomic order), symmetric
    InfoNCE + cosine on paired cells; both modalities' embeddings of every cell."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
        positions=gene_positions(),
    output:
        embedding="results/multiomics/{dataset}/{method}/seed{seed}/embedding.h5ad",
        train=directory("results/multiomics/{dataset}/{method}/seed{seed}/train"),
    log:
        "logs/train_multiomics/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/train_multiomics/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(MULTIOMICS_METHODS),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        settings=multiomics_settings,
    script:
        "../workflow_scripts/train_multiomics.py"

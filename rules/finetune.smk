# Fine-tuning of every pretrained model (each recipe and its Transformer peer) per dataset and
# seed. GPUs come from the profile (set-resources finetune_* gpu: 1).


rule finetune_annotation:
    """Classifier fine-tuning on the reference split, predictions for the query split."""
    input:
        unpack(finetune_inputs),
    output:
        predictions="results/annotation/{dataset}/{method}/seed{seed}/predictions.csv",
        train=directory("results/annotation/{dataset}/{method}/seed{seed}/train"),
    wildcard_constraints:
        method="|".join(MODEL_NAMES),
    params:
        settings=finetune_settings("annotation"),
        genes={"n_hvg": None, "min_counts": 0},
    log:
        "logs/finetune_annotation/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/finetune_annotation/{dataset}/{method}/seed{seed}.benchmark.tsv"
    resources:
        gpu=0,
    conda:
        "../envs/gpu.yaml"
    script:
        "../workflow_scripts/finetune_annotation.py"


rule finetune_integration:
    """Masked-objective + adversarial fine-tuning on all cells; cell embeddings to obsm['X_emb']."""
    input:
        unpack(finetune_inputs),
    output:
        embedding="results/integration/{dataset}/{variant}/{method}/seed{seed}/embedding.h5ad",
        train=directory("results/integration/{dataset}/{variant}/{method}/seed{seed}/train"),
    wildcard_constraints:
        method="|".join(MODEL_NAMES),
    params:
        settings=finetune_settings("integration"),
        genes=gene_protocol,
    log:
        "logs/finetune_integration/{dataset}/{variant}/{method}/seed{seed}.log",
    benchmark:
        "logs/finetune_integration/{dataset}/{variant}/{method}/seed{seed}.benchmark.tsv"
    resources:
        gpu=0,
    conda:
        "../envs/gpu.yaml"
    script:
        "../workflow_scripts/finetune_integration.py"

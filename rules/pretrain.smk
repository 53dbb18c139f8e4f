# Pretraining on the census token corpus: each recipe and its same-size Transformer peer.
# GPUs come from the profile (profiles/slurm: set-resources pretrain gpu); several GPUs in one
# job run under torchrun. A rerun after preemption resumes from the newest good checkpoint.
# The outputs are update(): Snakemake keeps them while the job runs (a resumed run appends to
# metrics.csv; model/ is replaced atomically at the end) and restores them if it fails, so a failed
# rerun never costs the previous good model or the training curve.


rule pretrain:
    """Pretrain one model (results/pretrain/{model}/: model/, metrics.csv, checkpoints/)."""
    input:
        unpack(pretrain_inputs),
    output:
        model=update(directory("results/pretrain/{model}/model")),
        metrics=update("results/pretrain/{model}/metrics.csv"),
    log:
        "logs/pretrain/{model}.log",
    benchmark:
        "logs/pretrain/{model}.benchmark.tsv"
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=60,
    params:
        settings=pretrain_settings,
        triton_cache="results/.triton_cache",
    script:
        "../workflow_scripts/pretrain.py"


rule pretrained:
    """Named target: every pretrained model of the config."""
    input:
        pretrained_models(),

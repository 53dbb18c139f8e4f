# The trajectory task (issue 25): scib's trajectory conservation and the Spearman correlations of each
# method's diffusion pseudotime with a dataset's published pseudotime and measured time
# (results/tables/trajectory.*). Methods: every pretrained model of evaluation.models, zero-shot (its
# cell embeddings, nothing fine-tuned), its <model>_scratch control (the same architecture at a seeded
# random init) where evaluation.scratch_controls is on, and evaluation.trajectory.baselines (pca).
# Included after rules/common_trajectory.smk (its helpers), common_evaluation.smk and common_figures.smk
# (seed_param, score_extra, FIGURES, figure_simulated).
# GPUs come from the profile (set-resources embed_trajectory gpu: 1).


localrules:
    trajectory_table,
    plot_trajectory,
    trajectory_table_report,


rule embed_trajectory:
    """Zero-shot cell embeddings of every cell of a trajectory dataset (cellmamba.embed), by a pretrained
    model or its scratch control (the same architecture, seeded random init)."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
        model=trajectory_model_dir,
    output:
        embedding="results/trajectory/{dataset}/{method}/seed{seed}/embedding.h5ad",
    log:
        "logs/embed_trajectory/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/embed_trajectory/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(TRAJECTORY_MODELS),
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        method="{method}",
        init=trajectory_init,
        seed=seed_param,
        modality=trajectory_modality,
        settings=trajectory_embed_settings(),
    script:
        "../workflow_scripts/embed_trajectory.py"


rule baseline_trajectory:
    """PCA of the log-normalised expression (highly variable genes, z-scored) of every cell."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
    output:
        embedding="results/trajectory/{dataset}/{method}/seed{seed}/embedding.h5ad",
    log:
        "logs/baseline_trajectory/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "logs/baseline_trajectory/{dataset}/{method}/seed{seed}.benchmark.tsv"
    wildcard_constraints:
        method="|".join(TRAJECTORY_BASELINES),
    conda:
        "../envs/eval.yaml"
    params:
        method="{method}",
        seed=seed_param,
        modality=trajectory_modality,
        settings=TRAJ["pca"],
    script:
        "../workflow_scripts/baseline_trajectory.py"


rule score_trajectory:
    """scib's trajectory conservation and the DPT Spearman correlations of every method of one dataset
    (one job: the graphs are small next to scanpy's import), and each method's per-cell DPT."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
        embeddings=trajectory_embeddings,
    output:
        metrics="results/trajectory/{dataset}/metrics.csv",
        per_cell="results/trajectory/{dataset}/per_cell.csv",
    log:
        "logs/score_trajectory/{dataset}.log",
    benchmark:
        "logs/score_trajectory/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        dataset="{dataset}",
        reference=trajectory_reference,
        settings=TRAJ["scoring"],
        extra=score_extra,
    script:
        "../workflow_scripts/score_trajectory.py"


rule trajectory_table:
    """results/tables/trajectory.{csv,md}: method x dataset x metric, mean and spread over seeds."""
    input:
        trajectory_metric_files(),
    output:
        csv="results/tables/trajectory.csv",
        md="results/tables/trajectory.md",
    log:
        "logs/trajectory_table.log",
    benchmark:
        "logs/trajectory_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="trajectory",
        title=(
            "Trajectory conservation of zero-shot cell embeddings: scib's score ((Spearman + 1) / 2) and the "
            "Spearman correlation of each embedding's diffusion pseudotime with the published pseudotime and the "
            "measured time"
        ),
    script:
        "../workflow_scripts/make_table.py"


rule plot_trajectory:
    """Each method's diffusion pseudotime against the published pseudotime, coloured by measured time."""
    input:
        per_cell="results/trajectory/{dataset}/per_cell.csv",
    output:
        png=report(
            f"{FIGURES}/trajectory_{{dataset}}.png",
            caption="../report/trajectory.rst",
            category="trajectory",
            subcategory="pseudotime",
            labels={"figure": "DPT vs pseudotime", "dataset": "{dataset}"},
        ),
        pdf=f"{FIGURES}/trajectory_{{dataset}}.pdf",
    log:
        "logs/plot_trajectory/{dataset}.log",
    benchmark:
        "logs/plot_trajectory/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        title="{dataset}",
        simulated=figure_simulated,
    script:
        "../workflow_scripts/plot_trajectory.py"


rule trajectory_table_report:
    """The trajectory table (results/tables/trajectory.md) as an HTML page for the workflow report."""
    input:
        md="results/tables/{task}.md",
    output:
        html=report(
            f"{FIGURES}/table_{{task}}.html",
            caption="../report/table.rst",
            category="trajectory",
            subcategory="table",
            labels={"figure": "table", "task": "{task}"},
        ),
    log:
        "logs/table_report/{task}.log",
    benchmark:
        "logs/table_report/{task}.benchmark.tsv"
    wildcard_constraints:
        task="trajectory",
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/table_report.py"

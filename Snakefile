# cellmamba: Census -> QC -> tokenization shards -> pretraining -> fine-tuning -> metrics -> tables.
# Wiring only; the work is done by the cellmamba package (src/cellmamba) through workflow_scripts/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/common_evaluation.smk"
include: "rules/census.smk"
include: "rules/preprocess.smk"
include: "rules/tokenize.smk"
include: "rules/pretrain.smk"
include: "rules/datasets.smk"
include: "rules/finetune.smk"
include: "rules/baselines.smk"
include: "rules/metrics.smk"
include: "rules/common_figures.smk"
include: "rules/figures.smk"
include: "rules/common_trajectory.smk"
include: "rules/trajectory.smk"
include: "rules/common_genes.smk"
include: "rules/genes.smk"


report: "report/workflow.rst"


localrules:
    all,
    corpus,
    pretrained,
    download_dataset,
    annotation_table,
    integration_table,
    perturbation_table,
    multiomics_table,
    plot_metric_bars,
    plot_umaps,
    plot_perturbation_scatter,
    plot_confusion,
    plot_loss_curves,
    plot_throughput,
    plot_scalability,
    table_report,
    gene_pairs_table,
    rank_reconstruction_table,
    plot_gene_pairs,
    plot_rank_reconstruction,
    gene_table_report,


rule all:
    input:
        all_targets(),


rule corpus:
    """Named target: the tokenized pretraining corpus (every configured tokenizer)."""
    input:
        token_manifests(),


rule genes:
    """Named target: GeneMamba's gene analyses (gene pairs, rank reconstruction): tables and figures."""
    input:
        gene_targets(),

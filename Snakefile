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
    table_report,


rule all:
    input:
        all_targets(),


rule corpus:
    """Named target: the tokenized pretraining corpus (every configured tokenizer)."""
    input:
        token_manifests(),

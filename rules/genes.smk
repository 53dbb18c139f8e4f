# GeneMamba's gene-level analyses (issue 24): gene-gene relationships from pretrained gene
# embeddings (results/tables/gene_pairs.*) and rank reconstruction (results/tables/rank_reconstruction.*),
# for the genemamba-recipe models of config genes.models (cellmamba.gene_analyses).
# Included after common_evaluation.smk and common_figures.smk (uses pretrained_of, SCRATCH, run_backend, qc_shards,
# FIGURES, and common_figures' os).
# GPUs come from the profile (set-resources gene_pair_scores / rank_reconstruction gpu: 1).


rule gene_pair_set:
    """The gene pairs of the gene-pair table: genes of the model vocabulary in a held-out gene set that
    appear in the held-out cells; labelled by held-out co-membership, marked where a trained set holds both."""
    input:
        model=f"results/pretrain/{pretrained_of(GENE_MODELS[0]) if GENE_MODELS else 'genemamba'}/model",
        dataset=gene_dataset(),
        held_out=GENES["held_out_gene_sets"],
        trained=trained_gene_sets(),
    output:
        pairs="results/genes/pairs.tsv.gz",
    log:
        "logs/gene_pair_set.log",
    benchmark:
        "logs/gene_pair_set.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        settings=gene_settings(),
    script:
        "../workflow_scripts/gene_pair_set.py"


rule gene_pair_scores:
    """AUROC / AUPRC of one model's gene embeddings (input table rows; contextual states averaged over
    the held-out cells) against held-out co-membership, on all and on strict pairs."""
    input:
        model=gene_model_dir,
        dataset=gene_dataset(),
        pairs="results/genes/pairs.tsv.gz",
    output:
        metrics="results/genes/pair_scores/{gene_model}.csv",
    log:
        "logs/gene_pair_scores/{gene_model}.log",
    benchmark:
        "logs/gene_pair_scores/{gene_model}.benchmark.tsv"
    wildcard_constraints:
        gene_model="|".join(GENE_MODELS) or "none",
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        method="{gene_model}",
        init=gene_init,
        pretrain_seed=config["pretrain"]["seed"],
        settings=gene_settings(),
    script:
        "../workflow_scripts/gene_pair_scores.py"


rule gene_pair_references:
    """The references on the same pairs: co-expression in the pretraining corpus, a seeded random score."""
    input:
        pairs="results/genes/pairs.tsv.gz",
        shards=qc_shards(),
    output:
        metrics="results/genes/pair_references.csv",
    log:
        "logs/gene_pair_references.log",
    benchmark:
        "logs/gene_pair_references.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        settings=gene_settings(),
    script:
        "../workflow_scripts/gene_pair_references.py"


rule gene_pairs_table:
    """results/tables/gene_pairs.{csv,md}: one row per model x embedding, plus the references."""
    input:
        gene_pair_runs(),
        "results/genes/pair_references.csv",
    output:
        csv="results/tables/gene_pairs.csv",
        md="results/tables/gene_pairs.md",
    log:
        "logs/gene_pairs_table.log",
    benchmark:
        "logs/gene_pairs_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="gene_pairs",
        title=(
            "Gene pairs: cosine similarity of gene embeddings vs co-membership of held-out gene sets "
            f"({', '.join(os.path.basename(p) for p in GENES['held_out_gene_sets'])}, never used by the pathway loss); "
            "strict = pairs that share no set the loss trained on"
        ),
    script:
        "../workflow_scripts/make_table.py"


rule rank_reconstruction:
    """The gene a model predicts at every position of the held-out cells' rank sequences (each position
    once hidden, masked_gene models), scored against the input ranking."""
    input:
        model=gene_model_dir,
        dataset=gene_dataset(),
    output:
        metrics="results/genes/rank_reconstruction/{gene_model}/metrics.csv",
        per_cell="results/genes/rank_reconstruction/{gene_model}/per_cell.csv",
        density="results/genes/rank_reconstruction/{gene_model}/density.csv",
    log:
        "logs/rank_reconstruction/{gene_model}.log",
    benchmark:
        "logs/rank_reconstruction/{gene_model}.benchmark.tsv"
    wildcard_constraints:
        gene_model="|".join(GENE_MODELS) or "none",
    conda:
        "../envs/gpu.yaml"
    resources:
        gpu=0,
    params:
        method="{gene_model}",
        dataset_name=GENES["dataset"],
        init=gene_init,
        pretrain_seed=config["pretrain"]["seed"],
        lm=config["pretrain"]["genemamba_lm"],
        mask_ratio=config["pretrain"]["mask_ratio"],
        settings=gene_settings(),
    script:
        "../workflow_scripts/rank_reconstruction.py"


rule rank_reconstruction_table:
    """results/tables/rank_reconstruction.{csv,md}: top-k overlaps and Spearman per model."""
    input:
        rank_reconstruction_runs(),
    output:
        csv="results/tables/rank_reconstruction.csv",
        md="results/tables/rank_reconstruction.md",
    log:
        "logs/rank_reconstruction_table.log",
    benchmark:
        "logs/rank_reconstruction_table.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        task="rank_reconstruction",
        title=(
            "Rank reconstruction of held-out cells: overlap of the top-k genes and Spearman of the ranks "
            "(means over cells)"
        ),
    script:
        "../workflow_scripts/make_table.py"


rule plot_gene_pairs:
    """AUROC / AUPRC bars per model and embedding; the references as lines."""
    input:
        table="results/tables/gene_pairs.csv",
    output:
        png=report(
            f"{FIGURES}/gene_pairs.png",
            caption="../report/gene_pairs.rst",
            category="gene analyses",
            subcategory="gene pairs",
            labels={"figure": "gene pairs"},
        ),
        pdf=f"{FIGURES}/gene_pairs.pdf",
    log:
        "logs/plot_gene_pairs.log",
    benchmark:
        "logs/plot_gene_pairs.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/plot_gene_pairs.py"


rule plot_rank_reconstruction:
    """Density of input vs reconstructed rank, one panel per model."""
    input:
        densities=rank_reconstruction_runs("density"),
        metrics=rank_reconstruction_runs(),
    output:
        png=report(
            f"{FIGURES}/rank_reconstruction.png",
            caption="../report/rank_reconstruction.rst",
            category="gene analyses",
            subcategory="rank reconstruction",
            labels={"figure": "rank reconstruction"},
        ),
        pdf=f"{FIGURES}/rank_reconstruction.pdf",
    log:
        "logs/plot_rank_reconstruction.log",
    benchmark:
        "logs/plot_rank_reconstruction.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        methods=GENE_MODELS,
    script:
        "../workflow_scripts/plot_rank_reconstruction.py"


rule gene_table_report:
    """A gene-analysis table (results/tables/<name>.md) as an HTML page for the workflow report."""
    input:
        md="results/tables/{task}.md",
    output:
        html=report(
            f"{FIGURES}/table_{{task}}.html",
            caption="../report/table.rst",
            category="gene analyses",
            subcategory="tables",
            labels={"figure": "table", "task": "{task}"},
        ),
    log:
        "logs/table_report/{task}.log",
    benchmark:
        "logs/table_report/{task}.benchmark.tsv"
    wildcard_constraints:
        task="|".join(GENE_TABLES),
    conda:
        "../envs/eval.yaml"
    script:
        "../workflow_scripts/table_report.py"

# Helpers of the gene-analysis rules (rules/genes.smk); no rules here.

GENES = config["genes"]
GENE_MODELS = list(GENES["models"])
#: keys of the genes sub-tree the workflow reads itself; the rest is cellmamba.gene_analyses.GeneAnalysisConfig
GENE_WORKFLOW_KEYS = ("models", "dataset", "held_out_gene_sets")
GENE_TABLES = ("gene_pairs", "rank_reconstruction")


def gene_settings():
    settings = {k: v for k, v in GENES.items() if k not in GENE_WORKFLOW_KEYS}
    return {**settings, "backend": run_backend(GENES)}


def gene_model_dir(wildcards):
    """The pretrained model directory of a gene-analysis model (a scratch control: its architecture's)."""
    return f"results/pretrain/{pretrained_of(wildcards.gene_model)}/model"


def gene_dataset():
    return f"results/datasets/{GENES['dataset']}.h5ad"


def gene_init(wildcards):
    return "scratch" if wildcards.gene_model.endswith(SCRATCH) else "pretrained"


def trained_gene_sets():
    """The GMT files the pathway loss trained on ([] when it was off): pairs sharing one are not strict."""
    return list(config["pretrain"]["gene_sets"]) if config["pretrain"]["pathway_weight"] > 0 else []


def gene_pair_runs():
    return expand("results/genes/pair_scores/{gene_model}.csv", gene_model=GENE_MODELS)


def rank_reconstruction_runs(what="metrics"):
    return expand("results/genes/rank_reconstruction/{gene_model}/{what}.csv", gene_model=GENE_MODELS, what=what)


def gene_targets():
    """The tables, figures and report pages of the gene analyses ([] when genes.models is empty)."""
    if not GENE_MODELS:
        return []
    out = []
    for name in GENE_TABLES:
        out += [f"results/tables/{name}.csv", f"results/tables/{name}.md", f"{FIGURES}/table_{name}.html"]
        out += [f"{FIGURES}/{name}.png", f"{FIGURES}/{name}.pdf"]
    return out

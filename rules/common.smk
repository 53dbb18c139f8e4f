# Helpers and config validation; no rules here.
import yaml
from snakemake.utils import validate

validate(config, "../config/schema.yaml")

#: the tokens each recipe reads (cellmamba.train.pretrain.RECIPE_TOKENIZER; scmamba: genomic patches);
#: models.<recipe>.tokenizer, where set, must say the same
RECIPE_TOKENIZER = {"genemamba": "rank", "scmamba2": "binned", "scmamba": "patch"}
for _name, _model in config["models"].items():
    if _model.get("tokenizer", RECIPE_TOKENIZER[_name]) != RECIPE_TOKENIZER[_name]:
        raise ValueError(
            f"config: models.{_name}.tokenizer is {_model['tokenizer']!r}, but the {_name} recipe reads "
            f"{RECIPE_TOKENIZER[_name]!r} tokens; set it to {RECIPE_TOKENIZER[_name]!r} or leave it out"
        )

SHARDS = [str(i) for i in range(config["census"]["n_shards"])]
TOKENIZERS = list(config["tokenize"]["tokenizers"])

RESOURCES = {
    "celltypist": "resources/demo/celltypist_sample_counts.h5ad",
    "kang": "resources/demo/kang2018_pbmc_ctrl_stim_subset.h5ad",
    "gene_table": "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz",
    "id2name": "resources/genes/gencode44_gene_id2name.csv.gz",
    "aliases": "resources/genes/human_gene_aliases_ncbi2022.tsv.gz",
    "positions": "resources/genes/human_gene_positions_hg38.tsv.gz",
}


wildcard_constraints:
    shard=r"\d+",
    model="|".join(f"{r}(_transformer|_u)?" for r in ("genemamba", "scmamba2")),
    tokenizer="|".join(["rank", "binned", "patch"]),


def run_backend(section):
    """The SSM kernels of a GPU job: the section's own ``backend`` where it sets one, else the
    run's (the top-level ``backend``)."""
    return section.get("backend") or config["backend"]


def census_store():
    """The local SOMA store the census rules read, as an input list ([] for the public Census)."""
    if config["demo_census"]["build"]:
        if not config["census"]["uri"]:
            raise ValueError(
                "config: demo_census.build is true but census.uri is null; give the path to build the store at"
            )
        return [config["census"]["uri"]]
    return []


def census_params():
    """The params the census rules pass to cellmamba.census.CensusConfig.from_workflow: the census
    sub-tree and every registry dataset's census_exclusion (config/datasets.yaml), which it adds
    to the config's own exclusions, so evaluation cells never reach pretraining."""
    return {
        "census": dict(config["census"]),
        "exclusions": {name: entry.get("census_exclusion") for name, entry in REGISTRY["datasets"].items()},
    }


def qc_shards():
    return expand("results/qc/{shard}.h5ad", shard=SHARDS)


GENE_POSITIONS_GENCODE48 = "results/genes/gene_positions_gencode48.tsv.gz"


def tokenize_params(wildcards):
    """Settings of one tokenizer (less the patch tokenizer's annotation, an input), plus the chunk size."""
    settings = {k: v for k, v in config["tokenize"][wildcards.tokenizer].items() if k != "annotation"}
    return dict(settings, chunk_cells=config["tokenize"]["chunk_cells"])


def gene_positions():
    """The gene position table of genomic order (patch tokens, the multiome rna tower):
    GENCODE 48's own order built by rule gene_positions, or the configured GTF / table."""
    annotation = config["tokenize"]["patch"]["annotation"]
    return GENE_POSITIONS_GENCODE48 if annotation == "gencode48" else annotation


def tokenize_inputs(wildcards):
    """A QC shard; corpus gene statistics for the rank tokenizer; gene positions and the gene
    table (each gene's kind, for the placement check) for patches."""
    inputs = {"shard": f"results/qc/{wildcards.shard}.h5ad"}
    if wildcards.tokenizer == "rank":
        inputs["gene_stats"] = "results/qc/gene_stats.tsv"
    elif wildcards.tokenizer == "patch":
        inputs["positions"] = gene_positions()
        inputs["gene_table"] = RESOURCES["gene_table"]
    return inputs


def token_shards(wildcards):
    return expand("results/tokens/{tokenizer}/{shard}", tokenizer=wildcards.tokenizer, shard=SHARDS)


def corpus_config(wildcards):
    """The resolved config sub-trees that determine a token corpus (recorded in its manifest)."""
    keys = ("census", "qc", "gene_stats")
    return {
        **{k: config[k] for k in keys},
        "tokenize": {
            "chunk_cells": config["tokenize"]["chunk_cells"],
            wildcards.tokenizer: config["tokenize"][wildcards.tokenizer],
        },
    }


def token_manifests():
    return expand("results/tokens/{tokenizer}/manifest.json", tokenizer=TOKENIZERS)


def all_targets():
    """Everything `snakemake all` builds (grows as the workflow's stages land)."""
    # gene_targets: rules/common_genes.smk; trajectory_targets: rules/common_trajectory.smk
    return token_manifests() + pretrained_models() + tables() + figures() + gene_targets() + trajectory_targets()


# --- pretraining ---
def pretrain_models():
    """Model names of the pretrain rule: each recipe, '<recipe>_transformer' for its peer and
    '<recipe>_u' for its unidirectional ablation (pretrain.unidirectional_ablations)."""
    names = list(config["pretrain"]["recipes"])
    if config["pretrain"]["transformer_peers"]:
        names += [f"{r}_transformer" for r in config["pretrain"]["recipes"]]
    names += [f"{r}_u" for r in config["pretrain"]["unidirectional_ablations"]]
    return names


def _recipe(model):
    return model.removesuffix("_transformer").removesuffix("_u")


def pretrain_inputs(wildcards):
    """The recipe's token corpus and the gene table (copied into the model directory as its
    vocabulary); genemamba's pathway loss also reads the GMT files."""
    recipe = _recipe(wildcards.model)
    tokenizer = RECIPE_TOKENIZER[recipe]
    inputs = {"corpus": f"results/tokens/{tokenizer}/manifest.json", "gene_stats": "results/qc/gene_stats.tsv"}
    if recipe == "genemamba" and config["pretrain"]["pathway_weight"] > 0:
        inputs["gene_sets"] = config["pretrain"]["gene_sets"]
    return inputs


def pretrain_settings(wildcards):
    """What cellmamba.train.pretrain.PretrainConfig.from_workflow takes: the models.<recipe> and
    pretrain sub-trees whole (pretrain's backend: the run's, unless it sets its own) and the job's
    model name."""
    recipe, p = _recipe(wildcards.model), config["pretrain"]
    m = config["models"][recipe]
    micro = m.get("micro_batch_size")
    if micro is not None and p["batch_size"] % micro:  # fails the DAG, not the job
        raise ValueError(
            f"config: models.{recipe}.micro_batch_size ({micro}) must divide pretrain.batch_size "
            f"({p['batch_size']})"
        )
    return {"model": dict(m), "pretrain": {**p, "backend": run_backend(p)}, "name": wildcards.model}


def pretrained_models():
    return expand("results/pretrain/{model}/model", model=pretrain_models())

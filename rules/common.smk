# Helpers and config validation; no rules here.
import yaml
from snakemake.utils import validate


validate(config, "../config/schema.yaml")

SHARDS = [str(i) for i in range(config["census"]["n_shards"])]
TOKENIZERS = list(config["tokenize"]["tokenizers"])

RESOURCES = {
    "celltypist": "resources/demo/celltypist_sample_counts.h5ad",
    "kang": "resources/demo/kang2018_pbmc_ctrl_stim_subset.h5ad",
    "gene_table": "resources/genes/cellxgene_genes_homo_sapiens_gencode48.csv.gz",
    "id2name": "resources/genes/gencode44_gene_id2name.csv.gz",
    "positions": "resources/genes/human_gene_positions_hg38.tsv.gz",
}


wildcard_constraints:
    shard=r"\d+",
    model="|".join(f"{r}(_transformer)?" for r in ("genemamba", "scmamba2")),
    tokenizer="|".join(["rank", "binned", "patch"]),


def census_store():
    """The local SOMA store the census rules read, as an input list ([] for the public Census)."""
    if config["demo_census"]["build"]:
        if not config["census"]["uri"]:
            raise ValueError("config: demo_census.build is true but census.uri is null; give the path to build the store at")
        return [config["census"]["uri"]]
    return []


def census_params():
    """The census sub-tree a census rule needs (what cellmamba.census.CensusConfig takes)."""
    return dict(config["census"])


def qc_shards():
    return expand("results/qc/{shard}.h5ad", shard=SHARDS)


def tokenize_params(wildcards):
    """Settings of one tokenizer, plus the chunk size."""
    return dict(config["tokenize"][wildcards.tokenizer], chunk_cells=config["tokenize"]["chunk_cells"])


def tokenize_inputs(wildcards):
    """A QC shard; corpus gene statistics for the rank tokenizer; gene positions for patches."""
    inputs = {"shard": f"results/qc/{wildcards.shard}.h5ad"}
    if wildcards.tokenizer == "rank":
        inputs["gene_stats"] = "results/qc/gene_stats.tsv"
    elif wildcards.tokenizer == "patch":
        inputs["positions"] = RESOURCES["positions"]
    return inputs


def token_shards(wildcards):
    return expand("results/tokens/{tokenizer}/{shard}", tokenizer=wildcards.tokenizer, shard=SHARDS)


def corpus_config(wildcards):
    """The resolved config sub-trees that determine a token corpus (recorded in its manifest)."""
    keys = ("census", "qc", "gene_stats")
    return {**{k: config[k] for k in keys}, "tokenize": {"chunk_cells": config["tokenize"]["chunk_cells"],
                                                         wildcards.tokenizer: config["tokenize"][wildcards.tokenizer]}}


def token_manifests():
    return expand("results/tokens/{tokenizer}/manifest.json", tokenizer=TOKENIZERS)


def all_targets():
    """Everything `snakemake all` builds (grows as the workflow's stages land)."""
    return token_manifests() + pretrained_models() + tables()


# --- pretraining ---
def pretrain_models():
    """Model names of the pretrain rule: each recipe, and '<recipe>_transformer' for its peer."""
    names = list(config["pretrain"]["recipes"])
    if config["pretrain"]["transformer_peers"]:
        names += [f"{r}_transformer" for r in config["pretrain"]["recipes"]]
    return names


def _recipe(model):
    return model.removesuffix("_transformer")


def pretrain_inputs(wildcards):
    """The recipe's token corpus; genemamba's pathway loss also reads the gene table and the GMT files."""
    recipe = _recipe(wildcards.model)
    tokenizer = config["models"][recipe]["tokenizer"]
    inputs = {"corpus": f"results/tokens/{tokenizer}/manifest.json"}
    if recipe == "genemamba" and config["pretrain"]["pathway_weight"] > 0:
        inputs["gene_stats"] = "results/qc/gene_stats.tsv"
        inputs["gene_sets"] = config["pretrain"]["gene_sets"]
    return inputs


def pretrain_settings(wildcards):
    """cellmamba.train.pretrain.PretrainConfig fields of one model."""
    recipe, p = _recipe(wildcards.model), config["pretrain"]
    m = config["models"][recipe]
    keys = ("mask_ratio", "batch_size", "max_steps", "lr", "warmup_steps", "weight_decay", "grad_clip",
            "grad_accum", "checkpoint_every", "log_every", "seed", "backend")
    settings = {k: p[k] for k in keys}
    settings.update(recipe=recipe, d_model=m["d_model"], n_layers=m["n_layers"], context_length=m["context_length"],
                    match_backbone=m["backbone"],
                    backbone="transformer" if wildcards.model.endswith("_transformer") else m["backbone"])
    if recipe == "genemamba":
        settings.update(lm=p["genemamba_lm"], pathway_weight=p["pathway_weight"],
                        pathway_temperature=p["pathway_temperature"])
    else:
        settings.update(zeros_ratio=p["zeros_ratio"])
    return settings


def pretrained_models():
    return expand("results/pretrain/{model}/model", model=pretrain_models())


# --- evaluation: datasets, fine-tuning, baselines, metrics, tables ---
EVAL = config["evaluation"]
with open(EVAL["registry"]) as _fh:
    REGISTRY = yaml.safe_load(_fh)
validate(REGISTRY, "../config/datasets.schema.yaml")
MODEL_NAMES = [f"{r}{s}" for r in ("genemamba", "scmamba2") for s in ("", "_transformer")]
ANNOTATION_BASELINES = ["logreg", "knn_pca"]
INTEGRATION_BASELINES = ["pca", "harmony", "scvi"]


def dataset_entry(name):
    """The registry entry of a dataset (or a user dataset from config), with a clear error if unknown."""
    if name in EVAL["user_datasets"]:
        user = EVAL["user_datasets"][name]
        return {"task": user["task"], "reader": "user_h5ad", "files": {"h5ad": {"path": user["path"]}},
                "keys": {k: user.get(k) for k in ("label_key", "batch_key", "split_key")},
                "x_kind": user.get("x_kind", "counts"), "protocol": {}, "simulated": False}
    if name not in REGISTRY["datasets"]:
        raise ValueError(f"config: dataset {name!r} is neither in {EVAL['registry']} nor in evaluation.user_datasets "
                         f"(registry: {sorted(REGISTRY['datasets'])})")
    return REGISTRY["datasets"][name]


def task_datasets(task):
    names = list(EVAL[task]["datasets"]) + [n for n, u in EVAL["user_datasets"].items() if u["task"] == task]
    for name in names:
        if dataset_entry(name)["task"] != task:
            raise ValueError(f"config: evaluation.{task}.datasets lists {name!r}, a {dataset_entry(name)['task']} dataset")
    return names


def dataset_file_path(dataset, key):
    spec = dataset_entry(dataset)["files"][key]
    return spec["path"] if "path" in spec else f"{EVAL['data_dir']}/{dataset}/{spec['name']}"


def dataset_files(wildcards):
    """Named inputs of prepare_dataset: the dataset's files (none for bundled / simulated data)."""
    return {key: dataset_file_path(wildcards.dataset, key) for key in dataset_entry(wildcards.dataset)["files"]}


def entry_param(wildcards):
    return dataset_entry(wildcards.dataset)


def seed_param(wildcards):
    return int(wildcards.seed)


def download_file_key(wildcards):
    """The registry file key behind <data_dir>/<dataset>/<name>."""
    for key, spec in dataset_entry(wildcards.dataset)["files"].items():
        if spec.get("name") == wildcards.name:
            return key
    raise ValueError(f"{EVAL['registry']}: dataset {wildcards.dataset!r} has no file named {wildcards.name!r}")


def variants(dataset):
    """'protocol' (the paper's gene selection), plus 'all_genes' where the protocol selects HVGs."""
    protocol = dataset_entry(dataset).get("protocol") or {}
    has_hvg = protocol.get("n_hvg") is not None
    return ["protocol"] + (["all_genes"] if has_hvg and EVAL["all_genes_variant"] else [])


def gene_protocol(wildcards):
    """Gene selection of a run: the protocol's HVGs / count filter, or none (all_genes)."""
    protocol = dataset_entry(wildcards.dataset).get("protocol") or {}
    if wildcards.variant == "all_genes":
        return {"n_hvg": None, "min_counts": 0}
    return {"n_hvg": protocol.get("n_hvg"), "min_counts": protocol.get("filter_gene_by_counts") or 0}


def finetune_inputs(wildcards):
    return {"dataset": f"results/datasets/{wildcards.dataset}.h5ad",
            "model": f"results/pretrain/{wildcards.method}/model", "vocabulary": "results/qc/gene_stats.tsv"}


def finetune_settings(task):
    def settings(wildcards):
        return {**EVAL[task]["finetune"], "seed": int(wildcards.seed)}
    return settings


def baseline_settings(wildcards):
    settings = {}
    if wildcards.method == "scvi":
        settings["max_epochs"] = EVAL["integration"]["scvi_max_epochs"]
    return settings


def score_extra(wildcards):
    """Columns every metric row of a run carries into the tables."""
    variant = getattr(wildcards, "variant", "protocol")
    return {"variant": variant, "simulated": bool(dataset_entry(wildcards.dataset).get("simulated", False))}


def annotation_runs():
    methods = list(EVAL["annotation"]["baselines"]) + list(EVAL["models"])
    return expand("results/annotation/{dataset}/{method}/seed{seed}/metrics.csv",
                  dataset=task_datasets("annotation"), method=methods, seed=EVAL["seeds"])


def integration_runs():
    methods = list(EVAL["integration"]["baselines"]) + list(EVAL["models"])
    return [f"results/integration/{d}/{v}/{m}/seed{s}/metrics.csv" for d in task_datasets("integration")
            for v in variants(d) for m in methods for s in EVAL["seeds"]]


def tables():
    out = []
    for task in ("annotation", "integration"):
        if task_datasets(task):
            out += [f"results/tables/{task}.csv", f"results/tables/{task}.md"]
    return out

# Helpers of the evaluation stages (datasets, fine-tuning, baselines, metrics, tables); no rules here.
# Split from common.smk (which it extends and is included after) to keep each under ~300 lines.


# --- evaluation: datasets, fine-tuning, baselines, metrics, tables ---
EVAL = config["evaluation"]
with open(EVAL["registry"]) as _fh:
    REGISTRY = yaml.safe_load(_fh)
validate(REGISTRY, "../config/datasets.schema.yaml")
MODEL_NAMES = [f"{r}{s}" for r in ("genemamba", "scmamba2") for s in ("", "_transformer", "_u")]
#: the no-pretraining control of a fine-tuned model: its architecture, random init, the same fine-tuning
SCRATCH = "_scratch"
FINETUNE_METHODS = MODEL_NAMES + [m + SCRATCH for m in MODEL_NAMES]
ANNOTATION_BASELINES = ["logreg", "knn_pca"]
INTEGRATION_BASELINES = ["pca", "harmony", "scvi"]
PERTURBATION_BASELINES = ["no_change", "train_mean", "additive"]
MULTIOMICS_METHODS = ["scmamba", "scmamba_bimamba", "scmamba_transformer"]
MULTIOMICS_BASELINES = ["pca_cca", "multivi", "totalvi"]
#: multi-omics baseline -> the modalities it models, sorted; None = any pair (cellmamba.baselines.multiomics.METHOD_MODALITIES)
MULTIOMICS_BASELINE_MODALITIES = {"pca_cca": None, "multivi": ["atac", "rna"], "totalvi": ["protein", "rna"]}
#: multi-omics method -> backbone of its towers (scmamba as published; our BiMamba variant; the same-size peer)
MULTIOMICS_ARCH = {"scmamba": "mamba2", "scmamba_bimamba": "bimamba_mamba2", "scmamba_transformer": "transformer"}


def dataset_entry(name):
    """The registry entry of a dataset (or a user dataset from config), with a clear error if unknown."""
    if name in EVAL["user_datasets"]:
        user = EVAL["user_datasets"][name]
        if user["task"] == "integration" and not user.get("batch_key"):
            raise ValueError(
                f"config: evaluation.user_datasets.{name}.batch_key is not set; the integration task "
                "needs the obs column with each cell's batch"
            )
        return {
            "task": user["task"],
            "reader": "user_h5ad",
            "files": {"h5ad": {"path": user["path"]}},
            "keys": {k: user.get(k) for k in ("label_key", "batch_key", "split_key")},
            "x_kind": user.get("x_kind", "counts"),
            "protocol": {},
            "simulated": False,
        }
    if name not in REGISTRY["datasets"]:
        raise ValueError(
            f"config: dataset {name!r} is neither in {EVAL['registry']} nor in evaluation.user_datasets "
            f"(registry: {sorted(REGISTRY['datasets'])})"
        )
    return REGISTRY["datasets"][name]


def task_datasets(task):
    names = list(EVAL[task]["datasets"]) + [n for n, u in EVAL["user_datasets"].items() if u["task"] == task]
    for name in names:
        if dataset_entry(name)["task"] != task:
            raise ValueError(
                f"config: evaluation.{task}.datasets lists {name!r}, a {dataset_entry(name)['task']} dataset"
            )
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


def finetuned_methods():
    """evaluation.models, each followed by its <model>_scratch control where
    evaluation.scratch_controls is on: the methods of the fine-tuning tasks' tables."""
    models = list(EVAL["models"])
    return [n for m in models for n in ([m, m + SCRATCH] if EVAL["scratch_controls"] else [m])]


def pretrained_of(method):
    """The pretrained model a fine-tuning method starts from (a scratch control: the one whose
    architecture it takes; its weights are not read)."""
    return method.removesuffix(SCRATCH)


def finetune_inputs(wildcards):
    return {
        "dataset": f"results/datasets/{wildcards.dataset}.h5ad",
        "model": f"results/pretrain/{pretrained_of(wildcards.method)}/model",
        "vocabulary": "results/qc/gene_stats.tsv",
        "aliases": RESOURCES["aliases"],
    }


def gene_overlap_settings():
    """evaluation.gene_overlap: min_fraction / warn_fraction of the fine-tuning rules' vocabulary check."""
    return dict(EVAL["gene_overlap"])


def finetune_settings(task):
    def settings(wildcards):
        finetune = EVAL[task]["finetune"]
        init = "scratch" if wildcards.method.endswith(SCRATCH) else "pretrained"
        return {**finetune, "seed": int(wildcards.seed), "backend": run_backend(finetune), "init": init}

    return settings


def baseline_settings(wildcards):
    if wildcards.method in MULTIOMICS_BASELINES:  # evaluation.multiomics.<method>
        return dict(EVAL["multiomics"][wildcards.method])
    settings = {}
    if wildcards.method == "scvi":
        settings["max_epochs"] = EVAL["integration"]["scvi_max_epochs"]
    return settings


def score_train(task):
    """Named input of a score rule: the run's train/ directory (its run.json holds the parameter
    counts the tables print) for pretrained models and towers; nothing for baselines."""

    def inputs(wildcards):
        if wildcards.method not in FINETUNE_METHODS + MULTIOMICS_METHODS:
            return {}
        variant = f"{wildcards.variant}/" if hasattr(wildcards, "variant") else ""
        return {"train": f"results/{task}/{wildcards.dataset}/{variant}{wildcards.method}/seed{wildcards.seed}/train"}

    return inputs


def score_extra(wildcards):
    """Columns every metric row of a run carries into the tables."""
    extra = {"variant": wildcards.variant} if hasattr(wildcards, "variant") else {}
    return {**extra, "simulated": bool(dataset_entry(wildcards.dataset).get("simulated", False))}


def annotation_runs():
    methods = list(EVAL["annotation"]["baselines"]) + finetuned_methods()
    return expand(
        "results/annotation/{dataset}/{method}/seed{seed}/metrics.csv",
        dataset=task_datasets("annotation"),
        method=methods,
        seed=EVAL["seeds"],
    )


def integration_runs():
    methods = list(EVAL["integration"]["baselines"]) + finetuned_methods()
    return [
        f"results/integration/{d}/{v}/{m}/seed{s}/metrics.csv"
        for d in task_datasets("integration")
        for v in variants(d)
        for m in methods
        for s in EVAL["seeds"]
    ]


def perturbation_split_settings(wildcards):
    """GEARS simulation-split settings of a perturbation dataset's protocol (defaults: GEARS')."""
    protocol = dataset_entry(wildcards.dataset).get("protocol") or {}
    return {
        "seed": protocol.get("split_seed", 1),
        "train_gene_set_size": protocol.get("train_gene_set_size", 0.75),
        "combo_seen2_train_frac": protocol.get("combo_seen2_train_frac", 0.75),
        "reverse_genes": EVAL["perturbation"]["reverse_genes"],
    }


def perturbation_inputs(wildcards):
    return {
        "dataset": f"results/datasets/{wildcards.dataset}.h5ad",
        "split": f"results/perturbation/{wildcards.dataset}/split.json",
    }


def perturbation_runs():
    methods = list(EVAL["perturbation"]["baselines"]) + finetuned_methods()
    return expand(
        "results/perturbation/{dataset}/{method}/seed{seed}/metrics.csv",
        dataset=task_datasets("perturbation"),
        method=methods,
        seed=EVAL["seeds"],
    )


def multiomics_settings(wildcards):
    """cellmamba.tasks.multiomics.MultiomicsConfig of one run: the scmamba model size, the
    method's backbone, the patch size of the tokenizer config and evaluation.multiomics.train."""
    m = config["models"]["scmamba"]
    settings = {
        **EVAL["multiomics"]["train"],
        "arch": MULTIOMICS_ARCH[wildcards.method],
        "d_model": m["d_model"],
        "n_layers": m["n_layers"],
        "patch_size": config["tokenize"]["patch"]["patch_size"],
        "seed": int(wildcards.seed),
        "backend": run_backend(EVAL["multiomics"]["train"]),
    }
    for key in ("d_state", "merge", "merge_every"):  # null: MultiomicsConfig's default
        if m.get(key) is not None:
            settings[key] = m[key]
    return settings


def multiomics_dataset_methods(dataset):
    """The multi-omics methods run on a dataset: the towers and pca_cca on every pair, a baseline
    limited to some modalities (multivi: RNA + ATAC, totalvi: RNA + protein) only on those."""
    mods = sorted(dataset_entry(dataset).get("modalities") or [])
    baselines = []
    for method in EVAL["multiomics"]["baselines"]:
        want = MULTIOMICS_BASELINE_MODALITIES[method]
        if want is not None and not mods:
            raise ValueError(
                f"config/datasets.yaml: {dataset} states no 'modalities'; the {method} baseline needs them"
            )
        if want is None or want == mods:
            baselines.append(method)
    return baselines + list(EVAL["multiomics"]["methods"])


def multiomics_runs():
    return [
        f"results/multiomics/{dataset}/{method}/seed{seed}/metrics.csv"
        for dataset in task_datasets("multiomics")
        for method in multiomics_dataset_methods(dataset)
        for seed in EVAL["seeds"]
    ]


def tables():
    out = []
    for task in ("annotation", "integration", "perturbation", "multiomics"):
        if task_datasets(task):
            out += [f"results/tables/{task}.csv", f"results/tables/{task}.md"]
    return out

# Helpers of the trajectory task's rules (rules/trajectory.smk); no rules here.
# Included after common_evaluation.smk and common_figures.smk (uses EVAL, MODEL_NAMES, SCRATCH,
# finetuned_methods, pretrained_of, dataset_entry, run_backend, FIGURES).

TRAJ = EVAL["trajectory"]
TRAJECTORY_BASELINES = ["pca"]
TRAJECTORY_MODELS = MODEL_NAMES + [m + SCRATCH for m in MODEL_NAMES]


def trajectory_datasets():
    """evaluation.trajectory.datasets, each checked: a registry (or user) dataset with an entry in
    evaluation.trajectory.references (the obs columns of its published trajectory)."""
    names = list(TRAJ["datasets"])
    for name in names:
        dataset_entry(name)  # unknown names fail here, naming the registry
        if name not in TRAJ["references"]:
            raise ValueError(
                f"config: evaluation.trajectory.datasets lists {name!r} but evaluation.trajectory.references "
                f"has no entry for it (pseudotime_key, label_key, time_key, modality); "
                f"it has {sorted(TRAJ['references'])}"
            )
    return names


def trajectory_seeds(method):
    """The seeds of a method: every evaluation seed for a scratch control (its random init); the
    first for a pretrained model's zero-shot embedding and for PCA, which no seed changes."""
    seeds = list(EVAL["seeds"])
    return seeds if method.endswith(SCRATCH) else seeds[:1]


def trajectory_methods():
    return list(TRAJ["baselines"]) + finetuned_methods()


def trajectory_embeddings(wildcards):
    """Every embedding file of one dataset: each method at each of its seeds."""
    return [
        f"results/trajectory/{wildcards.dataset}/{m}/seed{s}/embedding.h5ad"
        for m in trajectory_methods()
        for s in trajectory_seeds(m)
    ]


def trajectory_metric_files():
    return expand("results/trajectory/{dataset}/metrics.csv", dataset=trajectory_datasets())


def trajectory_reference(wildcards):
    """cellmamba.metrics.trajectory.TrajectoryReference of a dataset (null keys: the defaults)."""
    ref = dict(TRAJ["references"][wildcards.dataset])
    return {"time_key": None, "modality": None, **ref}


def trajectory_modality(wildcards):
    return trajectory_reference(wildcards)["modality"]


def trajectory_model_dir(wildcards):
    """The pretrained model directory of a method (a scratch control: its architecture's)."""
    return f"results/pretrain/{pretrained_of(wildcards.method)}/model"


def trajectory_init(wildcards):
    return "scratch" if wildcards.method.endswith(SCRATCH) else "pretrained"


def trajectory_embed_settings():
    settings = {k: v for k, v in TRAJ["embed"].items() if k != "backend"}
    return {**settings, "backend": run_backend(TRAJ["embed"])}


def trajectory_targets():
    """The table, its report page and one figure per dataset ([] when no dataset is configured)."""
    datasets = trajectory_datasets()
    if not datasets:
        return []
    out = ["results/tables/trajectory.csv", "results/tables/trajectory.md", f"{FIGURES}/table_trajectory.html"]
    for d in datasets:
        out += [f"{FIGURES}/trajectory_{d}.png", f"{FIGURES}/trajectory_{d}.pdf"]
    return out

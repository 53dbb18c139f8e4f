# The evaluation datasets: download (checksum policy of DESIGN.md) and conversion of each
# published format into the standard schema (results/datasets/{dataset}.h5ad).


rule download_dataset:
    """Fetch one registry file (known sha256 must match; unknown: recorded in the lock file).
    A file placed at the path beforehand is verified the same way and not downloaded."""
    output:
        f"{EVAL['data_dir']}/{{dataset}}/{{name}}",
    log:
        "logs/download_dataset/{dataset}/{name}.log",
    benchmark:
        "logs/download_dataset/{dataset}/{name}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        entry=entry_param,
        file_key=download_file_key,
        lock_file=EVAL["lock_file"],
    script:
        "../workflow_scripts/download_dataset.py"


rule prepare_dataset:
    """One dataset in the standard schema (obs cell_type / batch / split, x_kind, counts only if published)."""
    input:
        unpack(dataset_files),
    output:
        "results/datasets/{dataset}.h5ad",
    log:
        "logs/prepare_dataset/{dataset}.log",
    benchmark:
        "logs/prepare_dataset/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        entry=entry_param,
        dataset="{dataset}",
        lock_file=EVAL["lock_file"],
    script:
        "../workflow_scripts/prepare_dataset.py"


rule perturbation_split:
    """GEARS 0.0.2 'simulation' split of a perturbation dataset (seeded, subgroups) and the
    reverse-perturbation grid, one JSON that every method of the dataset reads."""
    input:
        dataset="results/datasets/{dataset}.h5ad",
    output:
        split="results/perturbation/{dataset}/split.json",
    log:
        "logs/perturbation_split/{dataset}.log",
    benchmark:
        "logs/perturbation_split/{dataset}.benchmark.tsv"
    conda:
        "../envs/eval.yaml"
    params:
        settings=perturbation_split_settings,
    script:
        "../workflow_scripts/perturbation_split.py"

# CELLxGENE Census -> raw-count shards (results/census/shards/{shard}.h5ad).


rule build_demo_census:
    """Demo only: a local Census-shaped SOMA store from the real data in resources/demo."""
    input:
        celltypist=RESOURCES["celltypist"],
        kang=RESOURCES["kang"],
        gene_table=RESOURCES["gene_table"],
        id2name=RESOURCES["id2name"],
    output:
        store=directory(config["census"]["uri"] or "results/demo/census_soma"),
    log:
        "logs/build_demo_census/build_demo_census.log",
    benchmark:
        "logs/build_demo_census/build_demo_census.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    params:
        census_version=config["census"]["census_version"],
    script:
        "../workflow_scripts/build_demo_census.py"


rule census_plan:
    """Query census obs once: filter, exclusions, and the static split into shards."""
    input:
        store=census_store(),
    output:
        plan="results/census/plan.parquet",
        genes="results/census/genes.tsv",
    log:
        "logs/census_plan/census_plan.log",
    benchmark:
        "logs/census_plan/census_plan.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=32000,
        runtime=120,
    params:
        census=census_params(),
    script:
        "../workflow_scripts/census_plan.py"


rule census_download:
    """Stream one shard's raw counts from the Census in bounded-memory chunks."""
    input:
        plan="results/census/plan.parquet",
        store=census_store(),
    output:
        shard="results/census/shards/{shard}.h5ad",
    log:
        "logs/census_download/{shard}.log",
    benchmark:
        "logs/census_download/{shard}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        census=census_params(),
    script:
        "../workflow_scripts/census_download.py"

# QC per shard (no highly-variable-gene selection) and exact corpus gene statistics.


rule qc:
    """scanpy QC metrics and cell filters; raw counts and size factors kept."""
    input:
        shard="results/census/shards/{shard}.h5ad",
    output:
        shard="results/qc/{shard}.h5ad",
    log:
        "logs/qc/{shard}.log",
    benchmark:
        "logs/qc/{shard}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        qc=config["qc"],
    script:
        "../workflow_scripts/qc.py"


rule gene_stats:
    """Per-gene non-zero medians and detection counts over every QC shard (bounded memory): each
    of the four radix passes maps over the shards in the job's processes and sums their histograms."""
    input:
        shards=qc_shards(),
    output:
        stats="results/qc/gene_stats.tsv",
    log:
        "logs/gene_stats/gene_stats.log",
    benchmark:
        "logs/gene_stats/gene_stats.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    threads: 8
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        target_sum=config["gene_stats"]["target_sum"],
    script:
        "../workflow_scripts/gene_stats.py"

# Token shards: rank (genemamba), binned (scmamba2), patch (scmamba).


rule gene_positions:
    """GENCODE 48's gene order as a position table: the vocabulary's gene table (in GTF order)
    placed on chromosomes against the anchor genes of the hg38 position table."""
    input:
        gene_table=RESOURCES["gene_table"],
        anchors=RESOURCES["positions"],
    output:
        positions=GENE_POSITIONS_GENCODE48,
    log:
        "logs/gene_positions.log",
    benchmark:
        "logs/gene_positions.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/gene_positions.py"


rule tokenize:
    """One QC shard -> one memory-mappable token shard directory."""
    input:
        unpack(tokenize_inputs),
    output:
        shard=directory("results/tokens/{tokenizer}/{shard}"),
    log:
        "logs/tokenize/{tokenizer}_{shard}.log",
    benchmark:
        "logs/tokenize/{tokenizer}_{shard}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=tokenize_params,
    script:
        "../workflow_scripts/tokenize.py"


rule token_manifest:
    """The corpus manifest of one tokenizer: its shards in order, cell counts, checksums."""
    input:
        shards=token_shards,
    output:
        manifest="results/tokens/{tokenizer}/manifest.json",
    log:
        "logs/token_manifest/{tokenizer}.log",
    benchmark:
        "logs/token_manifest/{tokenizer}.benchmark.tsv"
    conda:
        "../envs/data.yaml"
    params:
        corpus_config=corpus_config,
    script:
        "../workflow_scripts/token_manifest.py"

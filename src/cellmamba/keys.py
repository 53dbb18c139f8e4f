"""Names written into AnnData objects and result files, kept in one place.

Every obs / var / obsm / varm / layers / uns key cellmamba reads or writes is spelled here once
(as scanpy's ``_keys.py``); modules import the constant, never the literal string.
"""
from __future__ import annotations

# --------------------------------------------------------------------------- obs
#: obs column holding the census dataset id of each cell
OBS_DATASET_ID = "dataset_id"
#: obs column holding the census soma_joinid of each cell
OBS_SOMA_JOINID = "soma_joinid"
#: obs column written by QC: number of genes with a non-zero count
OBS_N_GENES = "n_genes_by_counts"
#: obs column written by QC: total counts of the cell
OBS_TOTAL_COUNTS = "total_counts"
#: obs column written by QC: percentage of counts on mitochondrial genes
OBS_PCT_MITO = "pct_counts_mt"
#: obs column written by QC: the cell's size factor (total counts / median total)
OBS_SIZE_FACTOR = "size_factor"
#: obs column of the standard schema: the cell-type label
OBS_CELL_TYPE = "cell_type"
#: obs column of the standard schema: the batch (donor / site / sample) of the cell
OBS_BATCH = "batch"
#: obs column of the standard schema: ``reference`` / ``query`` / ``train`` / ``test``
OBS_SPLIT = "split"
#: obs column of the standard schema: the perturbation condition (``ctrl`` for controls)
OBS_CONDITION = "condition"
#: obs column of the standard schema: the cell's measured modalities joined by "+" (e.g. ``rna+atac``)
OBS_MODALITY = "modality"
#: obs column of a perturbation predictions file: "test" (a test condition) or "reverse_candidate"
OBS_ROLE = "role"
#: obs column of the standard schema (trajectory datasets): the published pseudotime; NaN = the cell is on
#: no published trajectory
OBS_PSEUDOTIME = "pseudotime"
#: obs column of the standard schema (trajectory datasets): the measured time of the cell's sample (e.g. hours)
OBS_TIME = "time"
#: obs column scanpy's ``tl.dpt`` writes: the diffusion pseudotime from the root cell
OBS_DPT = "dpt_pseudotime"

# --------------------------------------------------------------------------- var
#: var column of the census gene table (the vocabulary): the Ensembl id (also the var index)
VAR_FEATURE_ID = "feature_id"
#: var column of the census gene table: the gene symbol
VAR_FEATURE_NAME = "feature_name"
#: var column of the census gene table: the gene length in bases
VAR_FEATURE_LENGTH = "feature_length"
#: var column of the standard schema: the gene symbol
VAR_GENE_NAME = "gene_name"
#: var column of the standard schema: the Ensembl gene id, where known
VAR_GENE_ID = "gene_id"
#: var column with the source's per-feature type (BMMC ``feature_types``: GEX / ADT / ATAC)
VAR_FEATURE_TYPE = "feature_type"
#: var column with each feature's modality (``rna`` / ``protein`` / ``atac``)
VAR_MODALITY = "modality"
#: var column of the simulated multiome: the gene a peak is linked to ("" for background peaks and genes)
VAR_LINKED_GENE = "linked_gene"
#: var column of the simulated multiome: ``promoter`` / ``distal`` / ``background`` for peaks, "" for genes
VAR_PEAK_KIND = "peak_kind"

# --------------------------------------------------------------------------- obsm / varm / layers
#: obsm key of the cell embedding in an integration embedding.h5ad (every method), (n_cells, d)
OBSM_EMBEDDING = "X_emb"
#: varm key: boolean (n_genes, n_datasets) measured-gene mask, columns = uns[UNS][UNS_MEASURED_DATASETS]
VARM_MEASURED = "measured"
#: varm key of the simulator's true gene-wise batch factors, (n_genes, n_batches)
VARM_BATCH_FACTOR = "batch_factor"
#: layer holding the raw counts, only where the publication provides counts
LAYER_COUNTS = "counts"

# --------------------------------------------------------------------------- uns
#: the uns namespace cellmamba writes into: uns["cellmamba"]
UNS = "cellmamba"
#: uns[UNS] key: the dataset ids of the varm[VARM_MEASURED] columns
UNS_MEASURED_DATASETS = "measured_datasets"
#: uns[UNS] key: what X holds (one of cellmamba.datasets.X_KINDS)
UNS_X_KIND = "x_kind"
#: uns[UNS] key: True for data from a simulator (tables label those rows)
UNS_SIMULATED = "simulated"
#: uns[UNS] key: the reader that built the object
UNS_READER = "reader"
#: uns[UNS] key: {file key: {"name", "sha256"}} of the files a prepared dataset was read from
UNS_SOURCE_FILES = "source_files"
#: uns[UNS] key: JSON text of cellmamba.runlog.provenance(entry) of a prepared dataset
UNS_PROVENANCE = "provenance"
#: uns key scanpy's ``tl.dpt`` reads: the index of the root cell of the diffusion pseudotime
UNS_IROOT = "iroot"
#: uns key of a simulator's parameters and drawn ground truth: under uns[UNS] for the integration
#: simulator, top-level for the multiome and perturbation ones (their readers rewrite uns[UNS])
UNS_SIMULATION = "simulation"


def obsm_embedding(recipe: str) -> str:
    """The obsm key cell embeddings of ``recipe`` are written to: ``X_cellmamba_<recipe>``."""
    return f"X_cellmamba_{recipe}"

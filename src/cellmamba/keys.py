"""Names written into AnnData objects and result files, kept in one place."""
from __future__ import annotations

#: obs column holding the census dataset id of each cell
OBS_DATASET_ID = "dataset_id"
#: obs column holding the census soma_joinid of each cell
OBS_SOMA_JOINID = "soma_joinid"
#: obs columns written by QC
OBS_N_GENES = "n_genes_by_counts"
OBS_TOTAL_COUNTS = "total_counts"
OBS_PCT_MITO = "pct_counts_mt"
OBS_SIZE_FACTOR = "size_factor"
#: var columns of the census gene table (the vocabulary); var index is the Ensembl id
VAR_FEATURE_ID = "feature_id"
VAR_FEATURE_NAME = "feature_name"
VAR_FEATURE_LENGTH = "feature_length"
#: varm key: boolean (n_genes, n_datasets) measured-gene mask, columns = uns[UNS][MEASURED_DATASETS]
VARM_MEASURED = "measured"
#: the uns namespace cellmamba writes into
UNS = "cellmamba"
UNS_MEASURED_DATASETS = "measured_datasets"
UNS_X_KIND = "x_kind"
#: standard dataset schema (DESIGN.md)
OBS_CELL_TYPE = "cell_type"
OBS_BATCH = "batch"
OBS_SPLIT = "split"
OBS_CONDITION = "condition"
OBS_MODALITY = "modality"
LAYER_COUNTS = "counts"


def obsm_embedding(recipe: str) -> str:
    """The obsm key cell embeddings of ``recipe`` are written to: ``X_cellmamba_<recipe>``."""
    return f"X_cellmamba_{recipe}"

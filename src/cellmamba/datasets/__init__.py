"""Readers for the six evaluation datasets' published formats and the standard schema.

The registry (URLs, checksums, reader names, keys) lives in config/datasets.yaml and reaches
this package as parameters: :mod:`.download` fetches and verifies files, :mod:`.readers`
turns each published format into the standard schema (:mod:`.schema`), :mod:`.simulate`,
:mod:`.simulate_perturbation` and :mod:`.simulate_multiome` make the simulated demos,
:mod:`.gears_split` the GEARS perturbation split, :mod:`.prepare` writes one registry entry to h5ad.
"""
from .download import MEMBER_SEPARATOR, download_file, extract_member, fetch, gunzip_file, read_lock, verify_file
from .prepare import UNS_PROVENANCE, UNS_SOURCE_FILES, prepare_dataset
from .readers import (FEATURE_MODALITY, READERS, UNS_READER, VAR_FEATURE_TYPE, VAR_MODALITY, read_annotation_pair,
                      read_bmmc, read_dataset, read_hsmm, read_norman, read_pbmc10k, read_pbmc68k_reduced,
                      read_sim_integration, read_sim_multiome, read_sim_perturbation, read_user_h5ad, stratified_split)
from .schema import (SPLITS, UNS_SIMULATED, VAR_GENE_ID, VAR_GENE_NAME, X_KINDS, check_finite, check_log1p_norm,
                     check_normalized, check_size, count_nonfinite, counts_matrix, log_normalized, validate_standard, x_kind)
from .gears_split import (PerturbationSplit, ReverseGrid, make_split_file, read_split, reverse_grid, simulation_split,
                          split_of_cells, subgroup_of, write_split)
from .simulate import UNS_SIMULATION, VARM_BATCH_FACTOR, pbmc68k_profiles, simulate_integration
from .simulate_multiome import simulate_multiome
from .simulate_perturbation import simulate_perturbation

__all__ = [
    # schema
    "X_KINDS", "SPLITS", "VAR_GENE_NAME", "VAR_GENE_ID", "UNS_SIMULATED", "x_kind", "log_normalized",
    "counts_matrix", "validate_standard", "check_finite", "check_log1p_norm", "check_normalized", "check_size",
    "count_nonfinite",
    # download
    "fetch", "verify_file", "download_file", "extract_member", "gunzip_file", "read_lock", "MEMBER_SEPARATOR",
    # readers
    "READERS", "read_dataset", "read_pbmc10k", "read_annotation_pair", "read_norman", "read_bmmc",
    "read_pbmc68k_reduced", "read_user_h5ad", "read_sim_integration", "read_sim_perturbation", "read_sim_multiome",
    "read_hsmm",
    "stratified_split", "VAR_FEATURE_TYPE",
    "VAR_MODALITY", "FEATURE_MODALITY", "UNS_READER",
    # simulation
    "simulate_integration", "pbmc68k_profiles", "VARM_BATCH_FACTOR", "UNS_SIMULATION", "simulate_perturbation",
    "simulate_multiome",
    # perturbation split (GEARS 0.0.2)
    "simulation_split", "reverse_grid", "PerturbationSplit", "ReverseGrid", "write_split", "read_split",
    "split_of_cells", "subgroup_of", "make_split_file",
    # prepare
    "prepare_dataset", "UNS_SOURCE_FILES", "UNS_PROVENANCE",
]

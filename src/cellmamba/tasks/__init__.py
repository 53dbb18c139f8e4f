"""Fine-tuning tasks on the evaluation datasets: annotation and batch integration (issue 5),
perturbation prediction and paired multi-omics integration (issue 6)."""
from .annotate import run_annotation
from .finetune import FinetuneConfig, embed_cells, load_for_finetuning
from .integrate import run_integration
from .multiomics import MultiomicsConfig, MultiomicsResult, TwoTowerModel, run_multiomics
from .perturb import PerturbationModel, PerturbationResult, PerturbConfig, predict_conditions, run_perturbation
from .tokens import (MIN_GENE_OVERLAP, WARN_GENE_OVERLAP, DatasetTokens, TokenCells, check_gene_overlap, gene_weights,
                     select_genes, tokenize_dataset, vocabulary_index)

__all__ = ["FinetuneConfig", "run_annotation", "run_integration", "load_for_finetuning", "embed_cells",
           "DatasetTokens", "TokenCells", "select_genes", "tokenize_dataset", "vocabulary_index",
           "check_gene_overlap", "gene_weights", "MIN_GENE_OVERLAP", "WARN_GENE_OVERLAP",
           "PerturbConfig", "PerturbationModel", "PerturbationResult", "predict_conditions", "run_perturbation",
           "MultiomicsConfig", "MultiomicsResult", "TwoTowerModel", "run_multiomics"]

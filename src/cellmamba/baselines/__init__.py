"""Simple baselines, first-class methods on the models' splits (DESIGN.md): logistic regression
and kNN on PCA (annotation); unintegrated PCA, Harmony, scVI (integration); no change, mean of
training perturbations, additive model (perturbation); PCA + CCA (multi-omics); PCA (trajectory)."""
from ._common import HVG_FLAVORS, reference_pca, select_hvg
from .annotation import (ANNOTATION_METHODS, KnnPcaSettings, LogregSettings, annotate_baseline,
                         run_annotation_baseline)
from .integration import (INTEGRATION_METHODS, OBSM_EMBEDDING, HarmonySettings, PcaSettings, ScviSettings,
                          integrate_baseline, run_integration_baseline)
from .multiomics import (MULTIOMICS_METHODS, clr_per_cell, log_normalise, modality_matrices, pca_cca,
                         run_multiomics_baseline, run_multiomics_baseline_files)
from .trajectory import TRAJECTORY_METHODS, TrajectoryPcaSettings, run_trajectory_baseline, trajectory_baseline
from .perturbation import (CTRL, OBS_ROLE, PERTURBATION_METHODS, additive_flags, condition_genes, perturbation_baseline,
                           prediction_targets, run_perturbation_baseline)

__all__ = ["ANNOTATION_METHODS", "LogregSettings", "KnnPcaSettings", "annotate_baseline", "run_annotation_baseline",
           "INTEGRATION_METHODS", "OBSM_EMBEDDING", "PcaSettings", "HarmonySettings", "ScviSettings",
           "integrate_baseline", "run_integration_baseline", "HVG_FLAVORS", "reference_pca", "select_hvg",
           "PERTURBATION_METHODS", "CTRL", "condition_genes", "additive_flags", "perturbation_baseline",
           "prediction_targets", "run_perturbation_baseline", "OBS_ROLE",
           "MULTIOMICS_METHODS", "modality_matrices", "clr_per_cell", "log_normalise", "pca_cca",
           "run_multiomics_baseline", "run_multiomics_baseline_files",
           "TRAJECTORY_METHODS", "TrajectoryPcaSettings", "trajectory_baseline", "run_trajectory_baseline"]

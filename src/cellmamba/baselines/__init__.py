"""Simple baselines, first-class methods on the models' splits (DESIGN.md): logistic regression
and kNN on PCA (annotation); unintegrated PCA, Harmony, scVI (integration); no change, mean of
training perturbations, additive model (perturbation)."""
from ._common import HVG_FLAVORS, reference_pca, select_hvg
from .annotation import (ANNOTATION_METHODS, KnnPcaSettings, LogregSettings, annotate_baseline,
                         run_annotation_baseline)
from .integration import (INTEGRATION_METHODS, OBSM_EMBEDDING, HarmonySettings, PcaSettings, ScviSettings,
                          integrate_baseline, run_integration_baseline)
from .perturbation import CTRL, PERTURBATION_METHODS, additive_flags, condition_genes, perturbation_baseline

__all__ = ["ANNOTATION_METHODS", "LogregSettings", "KnnPcaSettings", "annotate_baseline", "run_annotation_baseline",
           "INTEGRATION_METHODS", "OBSM_EMBEDDING", "PcaSettings", "HarmonySettings", "ScviSettings",
           "integrate_baseline", "run_integration_baseline", "HVG_FLAVORS", "reference_pca", "select_hvg",
           "PERTURBATION_METHODS", "CTRL", "condition_genes", "additive_flags", "perturbation_baseline"]

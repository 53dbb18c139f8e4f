"""Metrics, defined once so every method is scored the same way (DESIGN.md "Metrics").

- :mod:`.integration`: scib integration metrics (AvgBIO, AvgBATCH and their parts);
- :mod:`.classification`: annotation metrics on the query split;
- :mod:`.perturbation`: Pearson delta, MSE, reverse-perturbation top-k retrieval;
- :mod:`.foscttm`: multi-omics alignment (FOSCTTM, omics mixing entropy, label transfer);
- :mod:`.trajectory`: scib's trajectory conservation and the Spearman correlations of an
  embedding's diffusion pseudotime with the published pseudotime and the measured time;
- :mod:`.rows`: the long per-run row format (:func:`metrics_frame`, :func:`write_csv`, :func:`read_metrics`);
- :mod:`.tables`: per-run long frames -> mean / std over seeds -> CSV + Markdown tables.

Heavy dependencies (scib, scanpy, scikit-learn) are imported when a metric runs, not here.
"""
from ._common import Scores
from ._lisi_build import LisiBuildError, build_lisi_binary, lisi_binary
from .classification import (ANNOTATION_METRICS, PREDICTION_COLUMNS, confusion, query_only_classes,
                             score_annotation, score_predictions)
from .foscttm import (MULTIOMICS_METRICS, foscttm, foscttm_per_cell, label_transfer_accuracy, mixing_entropy,
                      score_multiomics, score_paired_embedding_file)
from .integration import (EMBEDDING_KEY, INTEGRATION_METRICS, SCIB, ScibSettings, clisi, cluster_agreement, ilisi,
                          l2_normalize, score_embedding_file, score_integration)
from .perturbation import (REVERSE_KS, REVERSE_MATCH, condition_profiles, de_gene_lists, pearson,
                           perturbation_frame, perturbation_scores, reverse_perturbation_scores,
                           reverse_perturbation_topk, score_perturbation_files, summarize_perturbation,
                           topk_accuracy)
from .rows import metrics_frame, read_metrics, write_csv
from .trajectory import (TRAJECTORY, TRAJECTORY_METRICS, TrajectoryReference, TrajectorySettings,
                         diffusion_pseudotime, score_trajectory, score_trajectory_files, spearman)
from .tables import higher_is_better, summarize, write_table

__all__ = [
    "Scores", "LisiBuildError", "build_lisi_binary", "lisi_binary",
    "ANNOTATION_METRICS", "PREDICTION_COLUMNS", "score_annotation", "score_predictions", "confusion",
    "query_only_classes",
    "INTEGRATION_METRICS", "SCIB", "ScibSettings", "EMBEDDING_KEY", "score_integration",
    "score_embedding_file", "ilisi", "clisi", "l2_normalize", "cluster_agreement",
    "pearson", "perturbation_scores", "summarize_perturbation", "topk_accuracy",
    "reverse_perturbation_scores", "reverse_perturbation_topk", "REVERSE_KS", "condition_profiles",
    "de_gene_lists", "score_perturbation_files", "perturbation_frame", "REVERSE_MATCH",
    "foscttm", "foscttm_per_cell", "mixing_entropy", "label_transfer_accuracy", "score_multiomics",
    "score_paired_embedding_file", "MULTIOMICS_METRICS",
    "metrics_frame", "write_csv", "read_metrics", "summarize", "write_table", "higher_is_better",
    "TRAJECTORY", "TRAJECTORY_METRICS", "TrajectoryReference", "TrajectorySettings", "diffusion_pseudotime",
    "score_trajectory", "score_trajectory_files", "spearman",
]

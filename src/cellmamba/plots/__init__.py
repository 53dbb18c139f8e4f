"""Figures of the benchmark: metric bars, embedding UMAPs, perturbation scatter, confusion
matrices, pretraining loss curves, GPU throughput and the trajectory scatter (DPT vs the
published pseudotime).

Every figure is drawn in one style (:mod:`.theme`): readable font sizes, a fixed colour per
method across all figures (baselines grey, Mamba models blues / green, Transformer peers
oranges / pink; Okabe-Ito colours, safe for colour-blind readers), titles naming the dataset,
the task, the metric's direction and ``(simulated)`` on simulated data. Each function writes a
PNG (150 dpi) and a PDF beside it (``out`` with its suffix replaced), atomically, and returns the
data it plotted as a DataFrame. A figure draws data computed before it (metric CSVs, embeddings,
the per-gene deltas the perturbation scoring writes); one module per figure family.

Departures from the papers: the UMAPs use scanpy's defaults (15 neighbours on the whole
embedding, ``min_dist`` 0.5) with a fixed seed on ONE seed's embedding per method (the papers'
figures show one run too, but do not state their UMAP settings); the perturbation scatter shows
changes from the control mean (GEARS / scGPT plot the same quantity as box plots over the top-20
DE genes, not as a scatter).
"""
from ..report import table_html  # the report's table page, kept importable from here
from .bars import TASK_METRICS, metric_bars
from .confusion import confusion_heatmaps
from .embedding import embedding_umaps
from .gpu import task_throughput, throughput
from .loss import loss_curve, loss_curves
from .perturbation import perturbation_scatter
from .scalability import scalability
from .theme import method_color, method_order, save_figure, style
from .trajectory import trajectory_scatter

__all__ = ["style", "method_color", "method_order", "save_figure", "metric_bars", "embedding_umaps",
           "perturbation_scatter", "confusion_heatmaps", "loss_curves", "loss_curve", "throughput",
           "task_throughput", "scalability", "table_html", "TASK_METRICS", "trajectory_scatter"]

"""Evaluation: per-case metrics, end-of-fold validation, postprocessing decisions, ensembles, comparison tables
and configuration selection."""

from engine.evaluation.metrics import case_metrics, empty_label_metrics
from engine.evaluation.postprocessing import decide_postprocessing

CODE_VERSION = "1"  # bump when this stage's results change: `voxelbase run` redoes the steps it performs

__all__ = ["case_metrics", "decide_postprocessing", "empty_label_metrics"]

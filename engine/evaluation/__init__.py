"""Evaluation: per-case metrics, end-of-fold validation, postprocessing decisions, ensembles, comparison tables
and configuration selection."""

from voxelbase.evaluation.metrics import case_metrics, empty_label_metrics
from voxelbase.evaluation.postprocessing import decide_postprocessing

CODE_VERSION = "1"  # bump when this stage's results change: `voxelbase run` redoes the steps it performs

__all__ = ["case_metrics", "decide_postprocessing", "empty_label_metrics"]

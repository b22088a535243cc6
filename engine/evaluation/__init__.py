"""Evaluation: per-case metrics, postprocessing decisions, comparison tables and configuration selection.

Heavier modules (evaluate, compare, selection) are imported from their own files; this package exports the
array-level functions that training's validation and inference call.
"""

from engine.evaluation.metrics import case_metrics, empty_label_metrics
from engine.evaluation.postprocessing import apply_postprocessing, decide_postprocessing, keep_largest_component
from engine.evaluation.records import insert_metrics

__all__ = [
    "apply_postprocessing",
    "case_metrics",
    "decide_postprocessing",
    "empty_label_metrics",
    "insert_metrics",
    "keep_largest_component",
]

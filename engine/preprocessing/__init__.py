"""Preprocessing stage: crop to nonzero, normalize, resample to the plan's spacing (and back, for export)."""

from engine.preprocessing.case import preprocess_case
from engine.preprocessing.revert import (
    probabilities_to_segmentation,
    revert_probabilities,
    revert_segmentation,
    revert_to_original,
)

__all__ = [
    "preprocess_case",
    "probabilities_to_segmentation",
    "revert_probabilities",
    "revert_segmentation",
    "revert_to_original",
]

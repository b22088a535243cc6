"""Volumes below every stage: resampling (to plan spacing and back), probabilities to segmentations, components."""

from voxelbase.volumes.combine import (
    argmax_segmentation,
    mean_probabilities,
    regions_to_segmentation,
    segmentation_from_probabilities,
)
from voxelbase.volumes.components import apply_postprocessing, keep_largest_component, largest_component_mask
from voxelbase.volumes.revert import probabilities_to_segmentation, revert_probabilities, revert_segmentation

__all__ = [
    "apply_postprocessing",
    "argmax_segmentation",
    "keep_largest_component",
    "largest_component_mask",
    "mean_probabilities",
    "probabilities_to_segmentation",
    "regions_to_segmentation",
    "revert_probabilities",
    "revert_segmentation",
    "segmentation_from_probabilities",
]

"""Preprocessing stage: crop to nonzero, normalize, resample to the plan's spacing (undoing it is `voxelbase.volumes`)."""

from voxelbase.preprocessing.case import preprocess_case
from voxelbase.preprocessing.records import PREPROCESSING_VERSION

CODE_VERSION = PREPROCESSING_VERSION  # bump (in records) when preprocessed numbers change: stored cases are redone

__all__ = ["CODE_VERSION", "preprocess_case"]

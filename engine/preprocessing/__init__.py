"""Preprocessing stage: crop to nonzero, normalize, resample to the plan's spacing (undoing it is `engine.volumes`)."""

from engine.preprocessing.case import preprocess_case
from engine.preprocessing.records import PREPROCESSING_VERSION

CODE_VERSION = PREPROCESSING_VERSION  # bump (in records) when preprocessed numbers change: stored cases are redone

__all__ = ["CODE_VERSION", "preprocess_case"]

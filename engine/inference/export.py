"""Writing segmentations (and probabilities) with a case's original geometry.

Image files are written through a temporary name and renamed, so no partial file ever looks complete.
SimpleITK is imported only here, when a file is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.ingest.reader import Geometry, zyx_to_itk


def geometry_of(row: dict) -> Geometry:
    """The Geometry of a `cases` row (or any dict with spacing, origin, direction in (z, y, x))."""
    return Geometry(tuple(row["spacing"]), tuple(row["origin"]), tuple(row["direction"]))


def write_segmentation(segmentation: np.ndarray, path: Path, *, geometry: Geometry) -> Path:
    """Write a (Z, Y, X) label map to `path` (format from its ending) with exactly `geometry`."""
    import SimpleITK as sitk

    array = np.ascontiguousarray(segmentation.astype(np.uint8 if segmentation.max(initial=0) < 256 else np.uint16))
    image = sitk.GetImageFromArray(array)
    spacing, origin, direction = zyx_to_itk(geometry)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name
    tmp = path.with_name(f".partial-{os.getpid()}-{name}")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)
    return path


def write_probabilities(probabilities: np.ndarray, path: Path) -> Path:
    """Class probabilities (K, Z, Y, X) in the original geometry, float16 `.npz` (for ensembling)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, probabilities=probabilities.astype(np.float16))
    os.replace(tmp, path)
    return path


def read_probabilities(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["probabilities"].astype(np.float32)

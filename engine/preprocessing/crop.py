"""Crop to the nonzero region, as nnU-Net does before anything else.

Cropping first keeps the empty air around brain MR (and the padding of some CT exports) out of normalization and
resampling. The nonzero mask is also what `use_nonzero_mask` normalization uses; label voxels outside it that are
background become -1, so the loader and the loss can tell "outside the body" from "background inside the body".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_fill_holes

OUTSIDE_LABEL = -1


@dataclass(frozen=True)
class Cropped:
    """A cropped case. `bbox` is (z0, z1, y0, y1, x0, x1), half-open, in the uncropped array's indices."""

    image: np.ndarray
    label: np.ndarray
    nonzero_mask: np.ndarray
    bbox: tuple[int, int, int, int, int, int]


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel is nonzero, with enclosed holes filled (a dark organ inside the body stays in)."""
    mask = image[0] != 0
    for channel in image[1:]:
        mask |= channel != 0
    return binary_fill_holes(mask)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Half-open box around the True voxels; the whole array when there are none (nnU-Net does the same)."""
    box: list[int] = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return tuple(v for n in mask.shape for v in (0, n))  # type: ignore[return-value]
        box += [int(hits[0]), int(hits[-1]) + 1]
    return tuple(box)  # type: ignore[return-value]


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> Cropped:
    """Crop a (C, Z, Y, X) image and its (Z, Y, X) label to the bounding box of the nonzero mask.

    The returned label is int16 and never None: without a label it is 0 inside the mask and -1 outside (nnU-Net
    builds the same map, which masked normalization then reads).
    """
    mask = nonzero_mask(image)
    bbox = bounding_box(mask)
    box = tuple(slice(bbox[2 * a], bbox[2 * a + 1]) for a in range(3))
    mask = mask[box]
    cropped_image = image[(slice(None), *box)]
    if label is None:
        cropped_label = np.where(mask, np.int16(0), np.int16(OUTSIDE_LABEL))
    else:
        cropped_label = label[box].astype(np.int16, copy=True)
        cropped_label[(cropped_label == 0) & ~mask] = OUTSIDE_LABEL
    return Cropped(image=cropped_image, label=cropped_label, nonzero_mask=mask, bbox=bbox)

"""Class probabilities of several models into one segmentation: average them, then take the argmax."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def label_dtype(n_classes: int) -> np.dtype:
    """The smallest unsigned type that holds class indices 0 .. n_classes - 1."""
    return np.dtype(np.uint8 if n_classes <= 255 else np.uint16)


def argmax_segmentation(probabilities: np.ndarray) -> np.ndarray:
    """(K, Z, Y, X) class maps -> (Z, Y, X) label map; ties keep the lower class, as argmax does."""
    return probabilities.argmax(0).astype(label_dtype(probabilities.shape[0]))


def mean_probabilities(members: Iterable[np.ndarray], *, where: str = "") -> np.ndarray:
    """The float32 mean of (K, Z, Y, X) probability maps, summed in place so one member is held at a time."""
    total, n = None, 0
    for probabilities in members:
        probabilities = np.asarray(probabilities, dtype=np.float32)
        if total is None:
            total = probabilities.copy() if not probabilities.flags.writeable else probabilities
        elif probabilities.shape != total.shape:
            raise ValueError(f"{where}probabilities of shape {probabilities.shape}, expected {total.shape}")
        else:
            np.add(total, probabilities, out=total)
        n += 1
    if total is None:
        raise ValueError("no probabilities to average")
    if n > 1:
        total /= n
    return total


def regions_to_segmentation(probabilities: np.ndarray, regions_class_order: Sequence[int]) -> np.ndarray:
    """(R, Z, Y, X) per-region sigmoid maps -> (Z, Y, X) uint16 label map, as nnU-Net converts them: region i is
    set where its map is above 0.5 and writes `regions_class_order[i]`, regions taken in order so a later
    (usually nested, smaller) region overwrites an earlier one; voxels in no region stay background."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[0] != len(regions_class_order):
        raise ValueError(
            f"{probabilities.shape[0]} region maps but {len(regions_class_order)} entries in regions_class_order"
        )
    segmentation = np.zeros(probabilities.shape[1:], dtype=np.uint16)
    for index, value in enumerate(regions_class_order):
        segmentation[probabilities[index] > 0.5] = int(value)
    return segmentation


def segmentation_from_probabilities(
    probabilities: np.ndarray, *, regions_class_order: Sequence[int] | None = None
) -> np.ndarray:
    """Class probabilities -> argmax label map; per-region sigmoid maps (a region plan) -> the regions' label map."""
    if regions_class_order:
        return regions_to_segmentation(probabilities, regions_class_order)
    return argmax_segmentation(probabilities)

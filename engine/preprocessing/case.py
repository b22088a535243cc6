"""One case through nnU-Net's preprocessing order: crop to nonzero, normalize, resample, sample class locations.

Pure function of arrays and the plan, so the same code serves `voxelbase preprocess` (from the raw Zarr store) and
`voxelbase predict` (from image files), and tests can compare it with nnU-Net's own output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelbase.plan import ConfigurationPlan
from voxelbase.preprocessing.class_locations import sample_locations_by_class
from voxelbase.preprocessing.crop import crop_to_nonzero
from voxelbase.preprocessing.normalize import normalize
from voxelbase.volumes.resample import compute_new_shape, resample_image, resample_label


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None = None,
    *,
    spacing: Sequence[float],
    plan: ConfigurationPlan,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Preprocess one (C, Z, Y, X) image and optional (Z, Y, X) label with a configuration's plan.

    Returns the float32 image, the int16 label (-1 marks background outside the nonzero mask; None without a
    label) and the properties needed to undo it: spacing, target_spacing, shape_before_cropping, bbox (z0, z1, y0,
    y1, x0, x1 half-open), shape_after_cropping, shape_after_resampling and class_locations
    ({label: (k, 3) int32 (z, y, x)}; empty without a label).

    A plan whose `axes_forward` is not the identity (2d along a coarse y or x axis) first transposes the case as
    nnU-Net does: the returned arrays and every property (spacing included) are then in that transposed order,
    and `voxelbase.volumes.revert` transposes outputs back.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an image of shape (C, Z, Y, X), got {image.shape}")
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} differs from the image's {image.shape[1:]}")
    spacing = tuple(float(s) for s in spacing)
    forward = plan.axes_forward
    if forward != (0, 1, 2):
        image = image.transpose(0, *(a + 1 for a in forward))
        label = None if label is None else label.transpose(forward)
        spacing = tuple(spacing[a] for a in forward)
    cropped = crop_to_nonzero(image, label)
    new_spacing = plan.target_spacing(spacing)
    new_shape = compute_new_shape(cropped.image.shape[1:], spacing=spacing, new_spacing=new_spacing)
    normalized = normalize(cropped.image, entries=plan.normalization, mask=cropped.label >= 0)
    settings = plan.resampling
    common = {
        "spacing": spacing,
        "new_spacing": new_spacing,
        "order_z": settings.order_z,
        "force_separate_z": settings.force_separate_z,
        "anisotropy_threshold": settings.anisotropy_threshold,
    }
    out_image = resample_image(
        normalized, new_shape, order=settings.image_order, bit_exact=settings.bit_exact, **common
    )
    del normalized
    out_label = None
    locations: dict[int, np.ndarray] = {}
    if label is not None:
        out_label = resample_label(cropped.label, new_shape, order=settings.label_order, **common)
        locations = sample_locations_by_class(out_label, plan.location_classes)
    properties = {
        "spacing": list(spacing),
        "target_spacing": list(new_spacing),
        "shape_before_cropping": list(image.shape[1:]),
        "bbox": list(cropped.bbox),
        "shape_after_cropping": list(cropped.image.shape[1:]),
        "shape_after_resampling": list(new_shape),
        "class_locations": locations,
    }
    return np.ascontiguousarray(out_image, dtype=np.float32), out_label, properties

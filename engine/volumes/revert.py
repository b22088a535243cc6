"""Undo preprocessing for prediction export: resample back to the cropped original shape and uncrop.

nnU-Net resamples the network's class maps (order 1, the same separate-z rule, from the plan spacing to the case's
own), takes the argmax and pastes it into the uncropped shape with background outside the crop box. Resampling is
linear per class, so it is done one class at a time into float32: a 512x512x600 CT never needs a float64 stack of
every class at full resolution, and `probabilities_to_segmentation` keeps only a running maximum.
"""

from __future__ import annotations

import numpy as np

from voxelbase.plan import ConfigurationPlan
from voxelbase.volumes.combine import label_dtype
from voxelbase.volumes.resample import resample_image, resample_image_nnunet, resample_label, separate_z


def to_case_axes(array: np.ndarray, plan: ConfigurationPlan) -> np.ndarray:
    """An uncropped (..., A, B, C) array in the plan's stored axis order -> the case's (z, y, x) order (a view
    when the plan does not transpose; see `ConfigurationPlan.axes_forward`)."""
    backward = plan.axes_backward
    if backward == (0, 1, 2):
        return array
    lead = array.ndim - 3
    return np.ascontiguousarray(array.transpose(*range(lead), *(b + lead for b in backward)))


def _box(properties: dict) -> tuple[slice, slice, slice]:
    b = [int(v) for v in properties["bbox"]]
    return slice(b[0], b[1]), slice(b[2], b[3]), slice(b[4], b[5])


def _resample_back_kwargs(properties: dict, plan: ConfigurationPlan) -> dict:
    settings = plan.resampling
    return {
        "spacing": properties["target_spacing"],
        "new_spacing": properties["spacing"],
        "order_z": settings.order_z,
        "force_separate_z": settings.force_separate_z,
        "anisotropy_threshold": settings.anisotropy_threshold,
    }


def resample_class_back(
    class_map: np.ndarray, *, properties: dict, plan: ConfigurationPlan, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """One (Z, Y, X) class map at plan spacing -> `dtype` at the cropped original shape (a bit-exact plan rounds
    nnU-Net's float64 result to `dtype` once; otherwise the float32 result is cast)."""
    kwargs = _resample_back_kwargs(properties, plan)
    if plan.resampling.bit_exact and tuple(np.shape(class_map)) != tuple(properties["shape_after_cropping"]):
        rule = separate_z(
            kwargs["spacing"],
            kwargs["new_spacing"],
            force=kwargs["force_separate_z"],
            threshold=kwargs["anisotropy_threshold"],
        )
        out = resample_image_nnunet(
            np.asarray(class_map)[None],
            properties["shape_after_cropping"],
            order=plan.resampling.probabilities_order,
            order_z=kwargs["order_z"],
            rule=rule,
            dtype=dtype,
        )
        return out[0]
    out = resample_image(
        np.asarray(class_map)[None],
        properties["shape_after_cropping"],
        order=plan.resampling.probabilities_order,
        **kwargs,
    )
    return out[0].astype(dtype, copy=False)


def revert_probabilities(probabilities: np.ndarray, *, properties: dict, plan: ConfigurationPlan) -> np.ndarray:
    """(K, Z, Y, X) class probabilities (or logits) -> float32 (K, *shape_before_cropping), in (z, y, x).

    Outside the crop box the background channel is 1 and the others 0, as nnU-Net writes saved probabilities; a
    region plan's maps are all 0 there (no region).
    """
    probabilities = np.asarray(probabilities)
    out = np.zeros((probabilities.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    if not plan.has_regions:
        out[0] = 1.0
    box = _box(properties)
    for k in range(probabilities.shape[0]):
        out[(k, *box)] = resample_class_back(probabilities[k], properties=properties, plan=plan)
    return to_case_axes(out, plan)


def probabilities_to_segmentation(
    probabilities: np.ndarray, *, properties: dict, plan: ConfigurationPlan
) -> np.ndarray:
    """Argmax of the resampled class maps (probabilities or logits), uncropped: (Z, Y, X) uint8 or uint16.

    Holds one resampled class and the running maximum at a time; ties keep the lower class, as argmax does.
    A region plan's per-region sigmoid maps are thresholded at 0.5 instead, region by region in
    `regions_class_order` (nnU-Net's conversion), each writing its label value.
    """
    probabilities = np.asarray(probabilities)
    if plan.has_regions:
        order = plan.regions_class_order or ()
        if len(order) != probabilities.shape[0]:
            raise ValueError(f"{probabilities.shape[0]} region maps but regions_class_order {list(order)}")
        segmentation = np.zeros(properties["shape_after_cropping"], dtype=np.uint16)
        for index, value in enumerate(order):
            segmentation[resample_class_back(probabilities[index], properties=properties, plan=plan) > 0.5] = value
        out = np.zeros(properties["shape_before_cropping"], dtype=np.uint16)
        out[_box(properties)] = segmentation
        return to_case_axes(out, plan)
    n_classes = probabilities.shape[0]
    dtype = label_dtype(n_classes)
    best = resample_class_back(probabilities[0], properties=properties, plan=plan)
    winner = np.zeros(best.shape, dtype=dtype)
    for k in range(1, n_classes):
        score = resample_class_back(probabilities[k], properties=properties, plan=plan)
        better = score > best
        winner[better] = k
        np.maximum(best, score, out=best)
        del score, better
    out = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    out[_box(properties)] = winner
    return to_case_axes(out, plan)


def revert_segmentation(segmentation: np.ndarray, *, properties: dict, plan: ConfigurationPlan) -> np.ndarray:
    """A (Z, Y, X) label map at plan spacing -> the original shape (label rule, background outside the box)."""
    segmentation = np.asarray(segmentation)
    resampled = resample_label(
        segmentation,
        properties["shape_after_cropping"],
        order=plan.resampling.label_order,
        **_resample_back_kwargs(properties, plan),
    )
    out = np.zeros(properties["shape_before_cropping"], dtype=segmentation.dtype)
    out[_box(properties)] = resampled
    return to_case_axes(out, plan)


def revert_to_original(probabilities_or_seg: np.ndarray, *, properties: dict, plan: ConfigurationPlan) -> np.ndarray:
    """Undo resampling and cropping: a 4-D float array is treated as class maps, a 3-D integer array as labels."""
    array = np.asarray(probabilities_or_seg)
    if array.ndim == 4:
        return revert_probabilities(array, properties=properties, plan=plan)
    if array.ndim == 3 and np.issubdtype(array.dtype, np.integer):
        return revert_segmentation(array, properties=properties, plan=plan)
    raise ValueError(
        f"expected (K, Z, Y, X) class maps or a (Z, Y, X) integer label map, got {array.dtype} {array.shape}"
    )

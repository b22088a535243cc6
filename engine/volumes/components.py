"""Connected components of label maps: nnU-Net's keep-the-largest-component postprocessing, applied.

Deciding whether it helps is evaluation's business (`voxelbase.evaluation.postprocessing`); applying a decision is
shared by prediction and ensembling, so it lives here, below both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def padded_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """The bounding box of `mask`, grown by `margin` voxels and clipped to the volume."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component(s) of a boolean mask (all of them when sizes tie).

    Labels only the bounding box of the mask, so a small structure in a large volume stays cheap.
    """
    if not mask.any():
        return mask.copy()
    box = padded_box(mask, margin=0)
    components, n = ndimage.label(mask[box], structure=np.ones((3,) * mask.ndim, dtype=bool))
    if n == 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask, dtype=bool)
    out[box] = np.isin(components, np.flatnonzero(sizes == sizes.max()))
    return out


def keep_largest_component(seg: np.ndarray, *, labels: Sequence[int] | None) -> np.ndarray:
    """A copy of `seg` with all but the largest component removed (set to background 0).

    `labels=None` treats all foreground as one mask (nnU-Net's step 1); a list treats each label separately.
    """
    out = seg.copy()
    if labels is None:
        mask = seg > 0
        out[mask & ~largest_component_mask(mask)] = 0
        return out
    for label in labels:
        mask = seg == label
        out[mask & ~largest_component_mask(mask)] = 0
    return out


def apply_postprocessing(seg: np.ndarray, decision: dict | None) -> np.ndarray:
    """Apply a decision from `decide_postprocessing` (None or an empty decision leaves `seg` as it is)."""
    if not decision:
        return seg
    if decision.get("foreground_lcc"):
        seg = keep_largest_component(seg, labels=None)
    per_label = decision.get("per_label_lcc") or []
    if per_label:
        seg = keep_largest_component(seg, labels=per_label)
    regions = decision.get("per_region_lcc") or []  # region datasets: one region (its values) after the other
    if regions:
        seg = seg.copy()
        for values in regions:
            mask = np.isin(seg, values)
            seg[mask & ~largest_component_mask(mask)] = 0
    return seg

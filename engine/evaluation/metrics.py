"""Per-case, per-label segmentation metrics with the spacing taken into account.

Conventions (the `metrics` table stores exactly these values; see schema/005_experiments.sql):

* Counts. ``tp``, ``fp``, ``fn`` count voxels; ``n_ref = tp + fn`` and ``n_pred = tp + fp``. Voxels under
  ``ignore_mask`` are left out of every metric (nnU-Net's ignore label).
* Dice ``2 tp / (2 tp + fp + fn)`` and IoU ``tp / (tp + fp + fn)``: ``None`` (SQL NULL) when reference and
  prediction are both empty, so that means over cases leave the case out, as nnU-Net's ``nanmean`` does;
  0 when exactly one of them is empty.
* Surfaces. The surface of a mask is the mask minus its binary erosion with the face-connected (6-neighbour)
  structuring element; a voxel on the edge of the volume counts as surface (outside the volume is background).
  Distances between surfaces are Euclidean in millimetres, using the anisotropic (z, y, x) spacing
  (``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``), from voxel centre to voxel centre.
* HD95: the larger of the two *directed* 95th percentiles -- the 95th percentile (NumPy's linear interpolation)
  of the distances from each prediction surface voxel to the reference surface, and that of the distances from
  each reference surface voxel to the prediction surface. This is MONAI's ``compute_hausdorff_distance(...,
  percentile=95)`` and, without surfel-area weights, DeepMind's ``compute_robust_hausdorff``; it is *not* the
  percentile of the pooled distances (MedPy's ``hd95``). ``None`` when either mask is empty (undefined).
* NSD (normalized surface Dice at tolerance tau mm, Nikolov et al. 2021) counted in surface voxels:
  ``(#pred surface voxels within tau of the ref surface + #ref surface voxels within tau of the pred surface)
  / (#pred surface voxels + #ref surface voxels)``, "within" meaning ``distance <= tau``. 1.0 when both are
  empty (nothing to miss), 0.0 when exactly one is empty.

The distance work runs on the bounding box of prediction and reference of one label, padded by one voxel (the
least that keeps the erosion at the box's faces exact), so small structures in large volumes are cheap: the
result is identical to computing on the whole volume, because every surface voxel lies inside that box and a
Euclidean distance does not depend on the space around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from voxelbase.volumes.components import padded_box

_FACE = ndimage.generate_binary_structure(3, 1)


class Region(NamedTuple):
    """A region scored as one structure (nnU-Net's region-based evaluation): a voxel is in it when its label is one
    of `values`. `label` is the number its metric rows carry (the region's output channel + 1), `name` its name."""

    label: int
    name: str
    values: tuple[int, ...]


def regions_of(named: Sequence[tuple[str, Sequence[int]]]) -> list[Region]:
    """(name, values) pairs in output order -> Regions numbered 1, 2, ..."""
    return [Region(i + 1, str(name), tuple(int(v) for v in values)) for i, (name, values) in enumerate(named)]


def class_mask(seg: np.ndarray, label: int | Region) -> np.ndarray:
    """Where `seg` holds a label, or any value of a region."""
    if isinstance(label, Region):
        return np.isin(seg, label.values)
    return seg == label


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    labels: Sequence[int | Region],
    spacing: Sequence[float],
    nsd_tolerance_mm: float = 1.0,
    ignore_mask: np.ndarray | None = None,
    surface_metrics: bool = True,
) -> list[dict]:
    """One dict per foreground label (in the order given) with dice, iou, hd95, nsd, tp, fp, fn, n_ref, n_pred.
    A `Region` is scored as the union of its values, its row carrying its number and its name (`region`).

    `pred` and `ref` are (Z, Y, X) integer label maps of the same shape; `spacing` is (z, y, x) in mm.
    `surface_metrics=False` skips HD95 and NSD (left as None) when only overlap counts are needed, e.g. for
    the postprocessing decision.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}")
    if pred.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"expected (Z, Y, X) arrays and a (z, y, x) spacing, got {pred.ndim}-d and {len(spacing)}")
    if ignore_mask is not None and ignore_mask.shape != ref.shape:
        raise ValueError(
            f"ignore mask shape {tuple(ignore_mask.shape)} differs from reference shape {tuple(ref.shape)}"
        )
    keep = None if ignore_mask is None else ~ignore_mask.astype(bool)
    rows = []
    for label in labels:
        p = class_mask(pred, label)
        r = class_mask(ref, label)
        if keep is not None:
            p &= keep
            r &= keep
        number = label.label if isinstance(label, Region) else int(label)
        row = _label_metrics(p, r, label=number, spacing=spacing, tau=nsd_tolerance_mm, surface=surface_metrics)
        if isinstance(label, Region):
            row["region"] = label.name
        rows.append(row)
    return rows


def empty_label_metrics(label: int | Region) -> dict:
    """The row of a label absent from both prediction and reference (what `case_metrics` gives for it)."""
    region = {"region": label.name} if isinstance(label, Region) else {}
    return {
        **region,
        "label": label.label if isinstance(label, Region) else int(label),
        "dice": None,
        "iou": None,
        "hd95": None,
        "nsd": 1.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
        "n_ref": 0,
        "n_pred": 0,
    }


def overlap_scores(tp: int, fp: int, fn: int) -> tuple[float | None, float | None]:
    """Dice and IoU from voxel counts; None for both when the label is in neither mask."""
    union = tp + fp + fn
    if union == 0:
        return None, None
    return 2.0 * tp / (2.0 * tp + fp + fn), tp / union


def _label_metrics(p: np.ndarray, r: np.ndarray, *, label: int, spacing, tau: float, surface: bool) -> dict:
    n_pred = int(np.count_nonzero(p))
    n_ref = int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r)) if n_pred and n_ref else 0
    fp, fn = n_pred - tp, n_ref - tp
    dice, iou = overlap_scores(tp, fp, fn)
    row = {
        "label": label,
        "dice": dice,
        "iou": iou,
        "hd95": None,
        "nsd": None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_ref": n_ref,
        "n_pred": n_pred,
    }
    if not surface:
        return row
    if n_pred == 0 and n_ref == 0:
        row["nsd"] = 1.0
    elif n_pred == 0 or n_ref == 0:
        row["nsd"] = 0.0
    else:
        box = padded_box(p | r)
        d_pred, d_ref = _surface_distances(p[box], r[box], spacing=spacing)
        row["hd95"] = float(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))
        within = np.count_nonzero(d_pred <= tau) + np.count_nonzero(d_ref <= tau)
        row["nsd"] = float(within / (d_pred.size + d_ref.size))
    return row


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE, border_value=0)


def _surface_distances(p: np.ndarray, r: np.ndarray, *, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and the other way round."""
    surface_p = _surface(p)
    surface_r = _surface(r)
    sampling = tuple(float(s) for s in spacing)
    to_ref = ndimage.distance_transform_edt(~surface_r, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~surface_p, sampling=sampling)
    return to_ref[surface_p], to_pred[surface_r]

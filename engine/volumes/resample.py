"""Resampling to a target spacing (and back), numerically equal to nnU-Net's `resample_data_or_seg_to_shape`.

nnU-Net resamples images with `skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)`, which is
`scipy.ndimage.zoom(grid_mode=True, mode="nearest")` on a copy padded by 12 edge voxels, followed by clipping to
the input's value range. It loops over channels and, for anisotropic data, over slices, in float64. Tensor-product
B-splines are separable, so the same numbers come out of one 1-D pass per resampled axis: an IIR spline prefilter
along the axis (`scipy.ndimage.spline_filter1d`, on the same 12-voxel edge padding) and a 4-tap gather. That is
what this module does, in float32 and on whole volumes, which is several times faster than the per-slice loop and
never allocates float64 copies.

Labels are resampled as nnU-Net does with `resize_segmentation`: each label's indicator map is interpolated
linearly and every voxel takes the label with the largest score, exact ties going to the nearest neighbour's label.
Instead of one interpolation per label, the 2^d interpolation corners are gathered once: where they all agree (the
vast majority of voxels) that label wins outright, and only boundary voxels are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.ndimage import spline_filter1d

from voxelbase.plan import ANISOTROPY_THRESHOLD  # one threshold for the planner and the resampler

# scipy pre-pads this many edge voxels before spline filtering in mode "nearest" (scipy.ndimage._prepad_for_spline_filter)
_SPLINE_PAD = 12


@dataclass(frozen=True)
class SeparateZ:
    """Whether to resample the low-resolution axis on its own, and which axis that is."""

    separate: bool
    axis: int | None


def compute_new_shape(
    shape: Sequence[int], *, spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """round(shape * spacing / new_spacing) per axis, with Python's rounding, as nnU-Net computes it."""
    return tuple(int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape))


def _lowres_axes(spacing: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing, dtype=float)
    return np.where(max(spacing) / spacing == 1)[0]


def separate_z(
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    force: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> SeparateZ:
    """nnU-Net's rule: resample the coarse axis separately when either spacing is anisotropic (max/min > threshold).

    The decision looks at the source spacing first, then the target. When two or three axes share the largest
    spacing there is no single coarse axis and everything is resampled together.
    """
    if force is not None:
        axes = _lowres_axes(spacing) if force else None
        separate = bool(force)
    elif max(spacing) / min(spacing) > threshold:
        separate, axes = True, _lowres_axes(spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        separate, axes = True, _lowres_axes(new_spacing)
    else:
        separate, axes = False, None
    if axes is None or len(axes) != 1:
        return SeparateZ(False, None)
    return SeparateZ(separate, int(axes[0]))


def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Where each output voxel centre falls in input index space (scipy's grid_mode / skimage's resize)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (float(n_in) / n_out) - 0.5


def _weights_shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def resize_axis(data: np.ndarray, *, axis: int, size: int, order: int) -> np.ndarray:
    """Resample one axis to `size` voxels with a B-spline of `order` 0, 1 or 3 (scipy zoom, grid mode, edge mode).

    Returns float32 for orders 1 and 3, the input dtype for order 0. No clipping: callers clip where skimage would.
    """
    n = data.shape[axis]
    if n == size:
        return data
    coords = _source_coordinates(n, size)
    wshape = _weights_shape(data.ndim, axis)
    if order == 0:
        index = np.clip(np.floor(coords + 0.5).astype(np.intp), 0, n - 1)
        return np.take(data, index, axis=axis)
    if order == 1:
        start = np.floor(coords)
        t = (coords - start).astype(np.float32).reshape(wshape)
        start = start.astype(np.intp)
        lo = np.take(data, np.clip(start, 0, n - 1), axis=axis).astype(np.float32, copy=False)
        hi = np.take(data, np.clip(start + 1, 0, n - 1), axis=axis).astype(np.float32, copy=False)
        hi -= lo
        hi *= t
        hi += lo
        return hi
    if order != 3:
        raise ValueError(f"resampling order {order} is not supported (use 0, 1 or 3)")
    pad = [(0, 0)] * data.ndim
    pad[axis] = (_SPLINE_PAD, _SPLINE_PAD)
    padded = np.pad(data.astype(np.float32, copy=False), pad, mode="edge")
    coefficients = spline_filter1d(padded, 3, axis=axis, output=np.float32, mode="nearest")
    del padded
    c = coords + _SPLINE_PAD
    start = np.floor(c)
    t = c - start
    start = start.astype(np.intp) - 1
    t2, t3 = t * t, t * t * t
    weights = ((1 - t) ** 3 / 6, (4 - 6 * t2 + 3 * t3) / 6, (1 + 3 * t + 3 * t2 - 3 * t3) / 6, t3 / 6)
    last = coefficients.shape[axis] - 1
    out = None
    for k, w in enumerate(weights):
        term = np.take(coefficients, np.clip(start + k, 0, last), axis=axis)
        term *= w.astype(np.float32).reshape(wshape)
        if out is None:
            out = term
        else:
            out += term
    return out


def _resize_spatial(
    volume: np.ndarray, shape: Sequence[int], *, order: int, axes: Sequence[int], clip_over: tuple[int, ...] | None
) -> np.ndarray:
    """Resize `axes` of one channel; clip to the input range over `clip_over` axes (skimage's clip=True)."""
    out = volume
    for axis in axes:
        out = resize_axis(out, axis=axis, size=shape[axis], order=order)
    if order > 1 and out is not volume and clip_over is not None:
        low = volume.min(axis=clip_over, keepdims=True)
        high = volume.max(axis=clip_over, keepdims=True)
        np.clip(out, low, high, out=out)
    return out


def resample_image(
    image: np.ndarray,
    new_shape: Sequence[int],
    *,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
    bit_exact: bool = False,
) -> np.ndarray:
    """Resample a (C, Z, Y, X) float image (or class probabilities/logits) to `new_shape`, as nnU-Net does.

    Separate-z: each slice is resampled in plane with `order` and clipped to that slice's range, then the coarse axis
    with `order_z` (no clipping, as nnU-Net's map_coordinates step). Otherwise all three axes with `order`, clipped
    to the channel's range. Returns float32; a shape that does not change returns the input unchanged.
    `bit_exact` takes nnU-Net's own float64 path (`resample_image_nnunet`) instead of the separable float32 one,
    which agrees with it to about one float32 step.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(image.shape[1:]) == new_shape:
        return image
    rule = separate_z(spacing, new_spacing, force=force_separate_z, threshold=anisotropy_threshold)
    if bit_exact:
        return resample_image_nnunet(image, new_shape, order=order, order_z=order_z, rule=rule)
    out = np.empty((image.shape[0], *new_shape), dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c]
        if rule.separate:
            in_plane = tuple(a for a in range(3) if a != rule.axis)
            resized = _resize_spatial(channel, new_shape, order=order, axes=in_plane, clip_over=in_plane)
            out[c] = resize_axis(resized, axis=rule.axis, size=new_shape[rule.axis], order=order_z)
        else:
            out[c] = _resize_spatial(channel, new_shape, order=order, axes=(0, 1, 2), clip_over=(0, 1, 2))
    return out


def _skimage_resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """skimage.transform.resize(order, mode="edge", anti_aliasing=False, clip=True) of a float64 array, as nnU-Net
    calls it: scipy's zoom in grid mode with the factors skimage derives, clipped to the input's range."""
    factors = np.divide(image.shape, shape)
    out = ndimage.zoom(image, [1 / f for f in factors], order=order, mode="nearest", cval=0, grid_mode=True)
    if order > 0:
        np.clip(out, image.min(), image.max(), out=out)
    return out


def resample_image_nnunet(
    image: np.ndarray,
    new_shape: Sequence[int],
    *,
    order: int,
    order_z: int,
    rule: SeparateZ,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """nnU-Net's `resample_data_or_seg` for images, step for step in float64 (per channel; per slice in plane, then
    nearest or `order_z` map_coordinates along the coarse axis), cast to `dtype` at the end: bit-identical output.
    nnU-Net casts to its input's dtype (float16 for its logits): pass it, a detour through float32 rounds twice."""
    new_shape = np.array([int(s) for s in new_shape])
    shape = np.array(image.shape[1:])
    out = np.zeros((image.shape[0], *new_shape), dtype=dtype)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float64)
        if not rule.separate:
            out[c] = _skimage_resize(channel, new_shape, order)
            continue
        axis = rule.axis
        in_plane = [int(s) for a, s in enumerate(new_shape) if a != axis]
        partial_shape = new_shape.copy()
        partial_shape[axis] = shape[axis]
        partial = np.zeros(partial_shape)
        for index in range(shape[axis]):
            where = tuple(index if a == axis else slice(None) for a in range(3))
            partial[where] = _skimage_resize(channel[where], in_plane, order)
        if shape[axis] == new_shape[axis]:
            out[c] = partial
            continue
        grid = np.mgrid[: new_shape[0], : new_shape[1], : new_shape[2]].astype(np.float64)
        for a in range(3):
            grid[a] = float(partial.shape[a]) / new_shape[a] * (grid[a] + 0.5) - 0.5
        out[c] = ndimage.map_coordinates(partial, grid, order=order_z, mode="nearest")
    return out


def _corner_indices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output position: the two linear-interpolation neighbours, their weights, and the nearest neighbour."""
    coords = _source_coordinates(n_in, n_out)
    start = np.floor(coords)
    t = coords - start
    start = start.astype(np.intp)
    lo = np.clip(start, 0, n_in - 1)
    hi = np.clip(start + 1, 0, n_in - 1)
    nearest = np.clip(np.floor(coords + 0.5).astype(np.intp), 0, n_in - 1)
    return lo, hi, t, nearest


def _resize_labels_linear(label: np.ndarray, shape: Sequence[int], *, axes: Sequence[int]) -> np.ndarray:
    """Argmax of linearly interpolated one-hot maps along `axes` (others kept), nearest neighbour on exact ties."""
    ndim = label.ndim
    per_axis_index: list[list[np.ndarray]] = []
    per_axis_weight: list[list[np.ndarray]] = []
    nearest_index: list[np.ndarray] = []
    for axis in range(ndim):
        if axis in axes and label.shape[axis] != shape[axis]:
            lo, hi, t, nearest = _corner_indices(label.shape[axis], shape[axis])
            per_axis_index.append([lo, hi])
            per_axis_weight.append([1.0 - t, t])
            nearest_index.append(nearest)
        else:
            identity = np.arange(label.shape[axis])
            per_axis_index.append([identity])
            per_axis_weight.append([np.ones(label.shape[axis])])
            nearest_index.append(identity)
    corners = list(np.ndindex(*[len(i) for i in per_axis_index]))
    first = label[np.ix_(*[per_axis_index[a][corners[0][a]] for a in range(ndim)])]
    if len(corners) == 1:
        return first.copy()
    uniform = np.ones(first.shape, dtype=bool)
    for corner in corners[1:]:
        uniform &= label[np.ix_(*[per_axis_index[a][corner[a]] for a in range(ndim)])] == first
    out = first.copy()
    mixed = np.nonzero(~uniform)
    if mixed[0].size == 0:
        return out
    # Score only the boundary voxels: gather each corner's label and weight there.
    labels = np.empty((len(corners), mixed[0].size), dtype=label.dtype)
    weights = np.empty((len(corners), mixed[0].size), dtype=np.float64)
    for k, corner in enumerate(corners):
        index = tuple(per_axis_index[a][corner[a]][mixed[a]] for a in range(ndim))
        labels[k] = label[index]
        w = np.ones(mixed[0].size)
        for a in range(ndim):
            w = w * per_axis_weight[a][corner[a]][mixed[a]]
        weights[k] = w
    same = labels[:, None, :] == labels[None, :, :]
    scores = (same * weights[None, :, :]).sum(axis=1)
    # mathematically equal scores may differ in the last bit depending on summation order: compare rounded
    scores = np.round(scores, 9)
    top = scores.max(axis=0)
    tied = scores == top
    nearest = label[tuple(nearest_index[a][mixed[a]] for a in range(ndim))]
    nearest_tied = (tied & (labels == nearest[None, :])).any(axis=0)
    big = np.iinfo(np.int64).max
    lowest_tied = np.where(tied, labels.astype(np.int64), big).min(axis=0)
    out[mixed] = np.where(nearest_tied, nearest, lowest_tied).astype(label.dtype)
    return out


def _resize_labels_threshold(label: np.ndarray, *, axis: int, size: int, order: int) -> np.ndarray:
    """nnU-Net's coarse-axis step for labels with order_z > 0: each label's map > 0.5 writes it, ascending."""
    out = np.zeros([size if a == axis else s for a, s in enumerate(label.shape)], dtype=label.dtype)
    for value in np.unique(label):
        score = resize_axis((label == value).astype(np.float32), axis=axis, size=size, order=order)
        out[np.round(score) > 0.5] = value
    return out


def resample_label(
    label: np.ndarray,
    new_shape: Sequence[int],
    *,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    order: int = 1,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    anisotropy_threshold: float = ANISOTROPY_THRESHOLD,
) -> np.ndarray:
    """Resample a (Z, Y, X) integer label map to `new_shape` as nnU-Net does (order 0 or 1; keeps the dtype)."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == new_shape:
        return label
    if order not in (0, 1):
        raise ValueError(f"label resampling order {order} is not supported (use 0 or 1)")
    rule = separate_z(spacing, new_spacing, force=force_separate_z, threshold=anisotropy_threshold)
    axes = tuple(a for a in range(3) if a != rule.axis) if rule.separate else (0, 1, 2)
    if order == 0:
        out = label
        for axis in axes:
            out = resize_axis(out, axis=axis, size=new_shape[axis], order=0)
    else:
        out = _resize_labels_linear(label, new_shape, axes=axes)
    if not rule.separate or out.shape[rule.axis] == new_shape[rule.axis]:
        return out
    if order_z == 0:
        return resize_axis(out, axis=rule.axis, size=new_shape[rule.axis], order=0)
    return _resize_labels_threshold(out, axis=rule.axis, size=new_shape[rule.axis], order=order_z)

"""Segmentation metrics against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from voxelbase.evaluation.metrics import case_metrics, empty_label_metrics


def sphere(shape, center, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return (d2 <= radius**2).astype(np.uint8)


def one(pred, ref, **kwargs) -> dict:
    kwargs.setdefault("spacing", (1.0, 1.0, 1.0))
    return case_metrics(pred, ref, labels=[1], **kwargs)[0]


def test_identical_masks():
    mask = sphere((24, 24, 24), (12, 12, 12), 6)
    row = one(mask, mask, spacing=(2.0, 0.5, 0.5))
    assert row["dice"] == 1.0 and row["iou"] == 1.0
    assert row["hd95"] == 0.0 and row["nsd"] == 1.0
    n = int(mask.sum())
    assert (row["tp"], row["fp"], row["fn"], row["n_ref"], row["n_pred"]) == (n, 0, 0, n, n)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.8, 0.8)])
def test_shifted_spheres(spacing):
    radius, k = 8, 3
    ref = sphere((40, 32, 32), (18, 16, 16), radius)
    pred = sphere((40, 32, 32), (18 + k, 16, 16), radius)
    row = one(pred, ref, spacing=spacing, nsd_tolerance_mm=k * spacing[0])
    # analytic overlap of two balls of radius r at distance d (in voxel units, where both are balls)
    overlap = math.pi * (4 * radius + k) * (2 * radius - k) ** 2 / 12
    assert row["dice"] == pytest.approx(overlap / (4 / 3 * math.pi * radius**3), abs=0.02)
    assert row["iou"] == pytest.approx(row["dice"] / (2 - row["dice"]))
    # every surface voxel moves by exactly the shift, so no distance exceeds it ...
    assert row["hd95"] <= k * spacing[0] + 1e-9
    # ... and the 95th percentile lies within a voxel of it (continuous answer: 0.95 k for a sphere)
    assert row["hd95"] >= k * spacing[0] - spacing[0]
    assert row["nsd"] == 1.0
    tight = one(pred, ref, spacing=spacing, nsd_tolerance_mm=0.5 * min(spacing))
    assert 0.0 < tight["nsd"] < 0.5


def test_anisotropic_spacing_scales_distances_per_axis():
    spacing = (2.5, 0.7, 0.9)
    pred = np.zeros((12, 12, 12), np.uint8)
    pred[5, 5, 5] = 1
    for offset, expected in [((3, 0, 0), 7.5), ((0, 4, 0), 2.8), ((0, 0, 2), 1.8), ((3, 4, 0), math.hypot(7.5, 2.8))]:
        ref = np.zeros_like(pred)
        ref[5 + offset[0], 5 + offset[1], 5 + offset[2]] = 1
        row = one(pred, ref, spacing=spacing, nsd_tolerance_mm=expected)
        assert row["hd95"] == pytest.approx(expected)
        assert row["dice"] == 0.0 and row["nsd"] == 1.0  # distance == tolerance counts as within
        assert one(pred, ref, spacing=spacing, nsd_tolerance_mm=expected - 1e-6)["nsd"] == 0.0


def test_disjoint_cubes():
    pred = np.zeros((20, 10, 10), np.uint8)
    ref = np.zeros_like(pred)
    pred[0:5, 2:7, 2:7] = 1
    ref[10:15, 2:7, 2:7] = 1
    row = one(pred, ref)
    assert row["dice"] == 0.0 and row["iou"] == 0.0 and row["nsd"] == 0.0
    assert (row["tp"], row["fp"], row["fn"]) == (0, 125, 125)
    assert 6.0 <= row["hd95"] <= 10.0


def test_empty_cases():
    full = np.zeros((8, 8, 8), np.uint8)
    full[2:5, 2:5, 2:5] = 1
    empty = np.zeros_like(full)
    both = one(empty, empty)
    assert both == empty_label_metrics(1)
    assert both["dice"] is None and both["iou"] is None and both["hd95"] is None and both["nsd"] == 1.0
    for pred, ref in [(empty, full), (full, empty)]:
        row = one(pred, ref)
        assert row["dice"] == 0.0 and row["iou"] == 0.0 and row["hd95"] is None and row["nsd"] == 0.0
        assert row["n_ref"] == int(ref.sum()) and row["n_pred"] == int(pred.sum())


def test_several_labels_and_ignore_mask():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[6:9, 6:9, 6:9] = 3  # 3 is the ignore label here
    pred = ref.copy()
    pred[6:9, 6:9, 6:9] = 1  # predicted 1 inside the ignored region: not counted
    rows = case_metrics(pred, ref, labels=[1, 2], spacing=(1, 1, 1), ignore_mask=ref == 3)
    assert [r["label"] for r in rows] == [1, 2]
    assert rows[0]["dice"] == 1.0 and rows[0]["fp"] == 0 and rows[0]["hd95"] == 0.0
    assert rows[1]["dice"] is None and rows[1]["nsd"] == 1.0
    unmasked = case_metrics(pred, ref, labels=[1], spacing=(1, 1, 1))[0]
    assert unmasked["fp"] == 27 and unmasked["dice"] == pytest.approx(54 / 81)


def _whole_volume_distances(pred, ref, spacing):
    face = ndimage.generate_binary_structure(3, 1)
    sp = pred & ~ndimage.binary_erosion(pred, face)
    sr = ref & ~ndimage.binary_erosion(ref, face)
    a = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    b = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return a, b


def test_bounding_box_gives_the_whole_volume_answer():
    rng = np.random.default_rng(0)
    spacing = (3.0, 1.0, 0.6)
    ref = ndimage.binary_dilation(rng.random((16, 30, 30)) > 0.995, iterations=2)
    ref[:, 0:4, 0:4] = True  # touches the volume's faces
    pred = np.roll(ref, 2, axis=2)
    a, b = _whole_volume_distances(pred, ref, spacing)
    row = one(pred.astype(np.uint8), ref.astype(np.uint8), spacing=spacing, nsd_tolerance_mm=1.0)
    assert row["hd95"] == pytest.approx(max(np.percentile(a, 95), np.percentile(b, 95)))
    assert row["nsd"] == pytest.approx((np.sum(a <= 1.0) + np.sum(b <= 1.0)) / (a.size + b.size))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        one(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8))


def random_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobby two-label cases with stray predictions (the cases the MONAI numbers below were measured on)."""
    rng = np.random.default_rng(3)
    for _ in range(i + 1):
        ref = np.zeros((20, 30, 30), np.uint8)
        ref[ndimage.binary_dilation(rng.random(ref.shape) > 0.998, iterations=2)] = 1
        ref[ndimage.binary_dilation(rng.random(ref.shape) > 0.999, iterations=1)] = 2
        pred = ref.copy()
        noise = ndimage.binary_dilation(rng.random(ref.shape) > 0.999, iterations=1)
        pred[noise] = rng.integers(0, 3)
        pred = np.roll(pred, 1, axis=1)
    return pred, ref


# Measured with MONAI 1.6.1 on these cases: compute_hausdorff_distance(pred, ref, percentile=95,
# spacing=(2.0, 0.8, 0.7)) and compute_surface_dice(pred, ref, class_thresholds=[1.5], spacing=(2.0, 0.8, 0.7)),
# one-hot (1, 1, Z, Y, X) float tensors per label; MONAI returns float32.
MONAI = {
    0: [(7.2818474769592285, 0.8759124279022217), (2.1043102741241455, 0.9660377502441406)],
    3: [(0.800000011920929, 0.9898219108581543), (13.656044006347656, 0.48792269825935364)],
}


@pytest.mark.parametrize("case", sorted(MONAI))
def test_hd95_and_nsd_match_monai(case):
    pred, ref = random_case(case)
    rows = case_metrics(pred, ref, labels=[1, 2], spacing=(2.0, 0.8, 0.7), nsd_tolerance_mm=1.5)
    for row, (hd95, nsd) in zip(rows, MONAI[case]):
        assert row["hd95"] == pytest.approx(hd95, rel=1e-5)
        assert row["nsd"] == pytest.approx(nsd, rel=1e-5)

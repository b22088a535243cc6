"""Preprocessing against independent computations (scipy, numpy) and against nnU-Net's own preprocessed output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from tests.conftest import NNUNET_DEMO, NNUNET_DEMO_DATA
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.plan import ConfigurationPlan, Normalization
from voxelbase.preprocessing import preprocess_case
from voxelbase.preprocessing.class_locations import sample_class_locations, sample_count
from voxelbase.preprocessing.crop import crop_to_nonzero
from voxelbase.preprocessing.normalize import normalize, normalize_channel
from voxelbase.volumes import probabilities_to_segmentation, revert_probabilities, revert_segmentation
from voxelbase.volumes.resample import (
    compute_new_shape,
    resample_image,
    resample_label,
    separate_z,
)

REFERENCE_CASES = ["demo_000", "demo_002"]  # the cases whose preprocessed arrays nnU-Net's reference keeps
# measured against nnU-Net v2.8.1: at most 7.2e-7 (a few float32 steps) on every case of the reference data
IMAGE_TOLERANCE = 1e-6


def skimage_resize(volume: np.ndarray, shape, order: int) -> np.ndarray:
    """What skimage.transform.resize(order, mode='edge', anti_aliasing=False) computes, written with scipy."""
    factors = [o / i for i, o in zip(volume.shape, shape)]
    out = ndi.zoom(volume.astype(np.float64), factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(shape)
    if order > 0:
        np.clip(out, volume.min(), volume.max(), out=out)
    return out


def reference_label_resize(seg: np.ndarray, shape) -> np.ndarray:
    """nnU-Net's resize_segmentation(order=1): argmax of per-label linear maps, nearest neighbour on exact ties."""
    factors = [o / i for i, o in zip(seg.shape, shape)]
    values = np.unique(seg)
    scores = np.stack(
        [ndi.zoom((seg == v).astype(float), factors, order=1, mode="nearest", grid_mode=True) for v in values]
    )
    nearest = ndi.zoom(seg.astype(float), factors, order=0, mode="nearest", grid_mode=True).astype(seg.dtype)
    tied = scores == scores.max(axis=0)
    nearest_tied = np.take_along_axis(tied, np.searchsorted(values, nearest)[None], 0)[0]
    return np.where(nearest_tied, nearest, values[np.argmax(scores, axis=0)])


# --- resampling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("shapes", [((10, 17, 13), (23, 9, 13)), ((5, 40, 41), (7, 47, 33)), ((3, 4, 5), (6, 8, 10))])
def test_resample_image_matches_scipy_zoom_in_grid_mode(order, shapes):
    old, new = shapes
    volume = np.random.default_rng(order).normal(size=old).astype(np.float32)
    # isotropic spacings: resampled as one 3-D volume
    ours = resample_image(volume[None], new, spacing=(1, 1, 1), new_spacing=(1, 1, 1), order=order)
    np.testing.assert_allclose(ours[0], skimage_resize(volume, new, order), atol=2e-6)
    assert ours.dtype == np.float32


def test_separate_z_resamples_slices_in_plane_then_nearest_along_z():
    volume = np.random.default_rng(1).normal(size=(9, 30, 28)).astype(np.float32)
    new = (14, 41, 19)
    ours = resample_image(volume[None], new, spacing=(3.0, 0.8, 0.8), new_spacing=(2.0, 0.6, 1.2), order=3, order_z=0)
    in_plane = np.stack([skimage_resize(volume[z], new[1:], 3) for z in range(volume.shape[0])])
    coords = np.mgrid[: new[0], : new[1], : new[2]].astype(float)
    coords[0] = (volume.shape[0] / new[0]) * (coords[0] + 0.5) - 0.5
    expected = ndi.map_coordinates(in_plane, coords, order=0, mode="nearest")
    np.testing.assert_allclose(ours[0], expected, atol=2e-6)


def test_separate_z_rule():
    rule = separate_z((3.0, 0.8, 0.8), (1, 1, 1))
    assert rule.separate and rule.axis == 0
    assert not separate_z((2.0, 0.8, 0.8), (1.0, 1.0, 1.0)).separate  # ratio 2.5 < 3
    assert separate_z((1.0, 1.0, 1.0), (1.0, 1.0, 4.0)).axis == 2  # target is anisotropic
    assert not separate_z((4.0, 4.0, 1.0), (1, 1, 1)).separate  # two coarse axes: no single low-res axis
    assert not separate_z((3.0, 0.8, 0.8), (1, 1, 1), force=False).separate


def test_compute_new_shape_rounds_like_nnunet():
    assert compute_new_shape((50, 87, 78), spacing=(2.7099, 0.8501, 0.8660), new_spacing=(2.9781, 0.8134, 0.8025)) == (
        45,
        91,
        84,
    )
    assert compute_new_shape((5,), spacing=(1.0,), new_spacing=(2.0,)) == (2,)  # round(2.5) == 2, as Python rounds


@pytest.mark.parametrize("shapes", [((10, 17, 13), (23, 9, 13)), ((8, 8, 8), (16, 16, 16)), ((16, 20, 16), (8, 13, 9))])
def test_label_resampling_matches_per_label_linear_argmax(shapes):
    old, new = shapes
    rng = np.random.default_rng(3)
    blocky = ndi.zoom(rng.integers(-1, 4, size=[s // 2 + 1 for s in old]), 2, order=0)[: old[0], : old[1], : old[2]]
    for seg in (blocky.astype(np.int16), rng.integers(0, 3, size=old).astype(np.int16)):
        ours = resample_label(seg, new, spacing=(1, 1, 1), new_spacing=(1, 1, 1), order=1)
        expected = reference_label_resize(seg, new)
        assert ours.dtype == seg.dtype
        assert (ours != expected).mean() < 1e-3  # only float ties decided by summation order may differ


# --- crop, normalize, class locations -----------------------------------------------------------------------------


def test_crop_to_nonzero_box_mask_and_outside_label():
    image = np.zeros((2, 12, 14, 16), dtype=np.int16)
    image[0, 2:9, 3:10, 4:12] = 5
    image[1, 3:10, 3:10, 4:13] = 7  # the second channel extends the box
    image[0, 5, 6, 7] = 0  # an enclosed hole: filled, stays inside the mask
    label = np.zeros((12, 14, 16), dtype=np.uint8)
    label[4:6, 5:7, 6:8] = 2
    label[2, 3, 4] = 1  # a labelled voxel inside the box
    cropped = crop_to_nonzero(image, label)
    assert cropped.bbox == (2, 10, 3, 10, 4, 13)
    assert cropped.image.shape == (2, 8, 7, 9)
    assert cropped.nonzero_mask[5 - 2, 6 - 3, 7 - 4]
    assert (cropped.label[~cropped.nonzero_mask] == -1).all()
    assert (cropped.label == 2).sum() == 8 and cropped.label[0, 0, 0] == 1
    no_label = crop_to_nonzero(image)
    assert set(np.unique(no_label.label)) == {-1, 0}
    empty = crop_to_nonzero(np.zeros((1, 3, 4, 5)))
    assert empty.bbox == (0, 3, 0, 4, 0, 5)


def test_ct_normalization_equals_numpy():
    raw = np.random.default_rng(0).normal(50, 80, size=(6, 7, 8)).astype(np.int16)
    entry = {"scheme": "ct", "mean": 40.0, "std": 30.0, "percentile_00_5": -20.0, "percentile_99_5": 150.0}
    expected = (np.clip(raw.astype(np.float64), -20, 150) - 40) / 30
    np.testing.assert_allclose(normalize_channel(raw, entry=Normalization.from_dict(entry)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="percentile_99_5"):
        normalize_channel(
            raw, entry=Normalization.from_dict({"scheme": "ct", "mean": 1, "std": 1, "percentile_00_5": 0})
        )


def test_zscore_rescale_noscale_and_unknown():
    rng = np.random.default_rng(1)
    img = rng.normal(300, 40, size=(5, 6, 7)).astype(np.float32)
    z = normalize_channel(img, entry=Normalization.from_dict({"scheme": "zscore"}))
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    mask = np.zeros(img.shape, bool)
    mask[1:4, 1:5, 1:6] = True
    zm = normalize_channel(
        img, entry=Normalization.from_dict({"scheme": "zscore", "use_nonzero_mask": True}), mask=mask
    )
    assert abs(zm[mask].mean()) < 1e-5 and abs(zm[mask].std() - 1) < 1e-4 and (zm[~mask] == 0).all()
    r = normalize_channel(img, entry=Normalization.from_dict({"scheme": "rescale_to_0_1"}))
    assert r.min() == 0 and abs(r.max() - 1) < 1e-6
    np.testing.assert_array_equal(normalize_channel(img, entry=Normalization.from_dict({"scheme": "noscale"})), img)
    with pytest.raises(ValueError, match="unknown normalization scheme 'bogus'"):
        normalize_channel(img, entry=Normalization.from_dict({"scheme": "bogus"}))
    with pytest.raises(ValueError, match="2 channel"):
        normalize(img[None], entries=[Normalization.from_dict({"scheme": "noscale"})] * 2)


def test_class_locations_counts_and_positions():
    label = np.zeros((40, 50, 60), dtype=np.int16)
    label[:, :, :30] = 1  # 60,000 voxels: 10,000 sampled
    label[5:10, 5:10, 40:50] = 2  # 250 voxels: all of them
    big = sample_count(2_000_000)
    assert big == 20_000 and sample_count(250) == 250 and sample_count(60_000) == 10_000
    locations = sample_class_locations(label, [1, 2, 3])
    assert locations[1].shape == (10_000, 3) and locations[2].shape == (250, 3) and locations[3].shape == (0, 3)
    for value, coords in locations.items():
        assert (label[tuple(coords.T)] == value).all()
        assert len({tuple(c) for c in coords}) == len(coords)  # without replacement
    again = sample_class_locations(label, [1, 2, 3])
    np.testing.assert_array_equal(again[1], locations[1])  # fixed seed


# --- whole cases: nnU-Net parity, dataset statistics, the inverse ------------------------------------------------


def read_case(root: Path, case: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
    return sitk.GetArrayFromImage(image)[None], sitk.GetArrayFromImage(label), image.GetSpacing()[::-1]


def reference_plan() -> ConfigurationPlan:
    """The 3d_fullres plan of nnU-Net's reference run, in this project's plan format (preprocessing reads its
    spacing, normalization, resampling and labels; the architecture is a placeholder)."""
    plans = json.loads((NNUNET_DEMO / "nnUNetPlans.json").read_text())
    labels = json.loads((NNUNET_DEMO / "dataset.json").read_text())["labels"]
    configuration = plans["configurations"]["3d_fullres"]
    assert plans["transpose_forward"] == [0, 1, 2]  # preprocess_case works in (z, y, x); so does this reference
    intensity = plans["foreground_intensity_properties_per_channel"]["0"]
    data_kwargs = configuration["resampling_fn_data_kwargs"]
    return ConfigurationPlan.from_dict(
        {
            "configuration": "3d_fullres",
            "spacing": configuration["spacing"],
            "patch_size": configuration["patch_size"],
            "batch_size": configuration["batch_size"],
            "n_channels": 1,
            "architecture": {
                "network": "plain_unet",
                "conv_dims": 3,
                "n_stages": 1,
                "features_per_stage": [32],
                "kernel_sizes": [[3, 3, 3]],
                "strides": [[1, 1, 1]],
                "n_conv_per_stage": [2],
                "n_conv_per_stage_decoder": [],
            },
            "labels": labels,
            "num_classes": len(labels),
            "normalization": [{"scheme": "ct", "use_nonzero_mask": configuration["use_mask_for_norm"][0], **intensity}],
            "resampling": {
                "image_order": data_kwargs["order"],
                "label_order": configuration["resampling_fn_seg_kwargs"]["order"],
                "probabilities_order": configuration["resampling_fn_probabilities_kwargs"]["order"],
                "order_z": data_kwargs["order_z"],
                "force_separate_z": data_kwargs["force_separate_z"],
            },
        }
    )


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_parity_with_nnunet_preprocessed_output(nnunet_demo_raw, case):
    """nnU-Net's own preprocessed arrays for the same case: image within float32 rounding, labels and class
    locations (per label: how many, and which voxels in which order) exactly equal."""
    expected = np.load(NNUNET_DEMO / "preprocessed_3d_fullres" / f"{case}.npz")
    expected_props = json.loads((NNUNET_DEMO / "preprocessed_3d_fullres" / f"{case}.json").read_text())
    image, label, spacing = read_case(nnunet_demo_raw, case)
    out_image, out_label, props = preprocess_case(image, label, spacing=spacing, plan=reference_plan())
    assert list(props["spacing"]) == expected_props["spacing"]
    assert props["shape_before_cropping"] == expected_props["shape_before_cropping"]
    assert props["bbox"] == [v for pair in expected_props["bbox_used_for_cropping"] for v in pair]
    assert props["shape_after_cropping"] == expected_props["shape_after_cropping_and_before_resampling"]
    assert out_image.shape == expected["data"].shape and out_image.dtype == np.float32
    np.testing.assert_allclose(out_image, expected["data"], rtol=0, atol=IMAGE_TOLERANCE)
    assert out_label.shape == expected["seg"].shape[1:]
    np.testing.assert_array_equal(out_label, expected["seg"][0])
    counts = {str(k): len(v) for k, v in props["class_locations"].items()}
    assert counts == expected_props["class_locations_count"]
    for value, coords in props["class_locations"].items():
        # nnU-Net stores (channel, z, y, x)
        np.testing.assert_array_equal(coords, expected[f"class_locations_{value}"][:, 1:], err_msg=f"label {value}")


def test_ct_foreground_is_standardized_over_the_dataset(nnunet_demo_raw):
    """With the dataset's own foreground statistics, normalized foreground has mean ~0 and std ~1."""
    cases = [read_case(nnunet_demo_raw, f"demo_{i:03d}") for i in range(NNUNET_DEMO_DATA["cases"])]
    foreground = np.concatenate([img[0][lab > 0].astype(np.float64) for img, lab, _ in cases])
    low, high = np.percentile(foreground, [0.5, 99.5])
    entry = {
        "scheme": "ct",
        "mean": foreground.mean(),
        "std": foreground.std(),
        "percentile_00_5": low,
        "percentile_99_5": high,
    }
    normalized = np.concatenate(
        [normalize_channel(img[0], entry=Normalization.from_dict(entry))[lab > 0] for img, lab, _ in cases]
    )
    assert abs(normalized.mean()) < 0.02 and abs(normalized.std() - 1) < 0.05


def test_revert_undoes_resampling_and_cropping(tmp_path):
    # one demo case at 48x96x96 voxels: its structures are large enough (the smallest ~200 voxels) to come back
    # within 10% of their size from the plan's thicker slices; the reference data's 32x64x64 tumours are not
    raw = write_demo_dataset(tmp_path / "raw", cases=1, test_cases=0, seed=0, shape=(48, 96, 96))
    image, label, spacing = read_case(raw, "demo_000")
    # a zero border on two sides, so that the case is really cropped
    image = np.pad(image, ((0, 0), (2, 0), (0, 5), (3, 0)))
    label = np.pad(label, ((2, 0), (0, 5), (3, 0)))
    plan = reference_plan()
    out_image, out_label, props = preprocess_case(image, label, spacing=spacing, plan=plan)
    assert props["bbox"] == [2, image.shape[1], 0, image.shape[2] - 5, 3, image.shape[3]]
    one_hot = np.stack([(out_label == k).astype(np.float32) for k in range(plan.num_classes)])
    probabilities = revert_probabilities(one_hot, properties=props, plan=plan)
    assert probabilities.shape == (plan.num_classes, *label.shape)
    assert (probabilities[0, :2] == 1).all() and (probabilities[1:, :, -5:] == 0).all()
    segmentation = probabilities_to_segmentation(one_hot, properties=props, plan=plan)
    np.testing.assert_array_equal(segmentation, probabilities.argmax(0))
    assert segmentation.dtype == np.uint8
    for reverted in (segmentation, revert_segmentation(np.clip(out_label, 0, None), properties=props, plan=plan)):
        assert reverted.shape == label.shape
        assert (reverted == label).mean() > 0.995
        for value in plan.foreground_labels:  # every structure comes back at about its size
            assert math.isclose((reverted == value).sum(), (label == value).sum(), rel_tol=0.1)

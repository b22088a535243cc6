"""Regions and the ignore label piece by piece: the plan's view of them, class locations and patch centres, the
region -> label map conversion, metrics and the postprocessing decision. In-memory arrays, no project."""

from __future__ import annotations

import numpy as np
import pytest

from voxelbase.evaluation.metrics import Region, case_metrics, regions_of
from voxelbase.evaluation.postprocessing import decide_postprocessing
from voxelbase.evaluation.postprocessing_regions import decide_region_postprocessing
from voxelbase.plan import ANNOTATED_KEY, ConfigurationPlan
from voxelbase.preprocessing.class_locations import sample_class_locations, sample_locations_by_class
from voxelbase.training.patches import CaseEntry, sample_batch
from voxelbase.volumes import apply_postprocessing, regions_to_segmentation, segmentation_from_probabilities

BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
REGIONS = regions_of([("whole_tumor", (1, 2, 3)), ("tumor_core", (2, 3)), ("enhancing_tumor", (3,))])


def _plan(labels: dict, **extra) -> ConfigurationPlan:
    num = 3 if any(isinstance(v, list) for v in labels.values()) else len([k for k in labels if k != "ignore"])
    return ConfigurationPlan.from_dict(
        {
            "configuration": "3d_fullres",
            "spacing": [1, 1, 1],
            "patch_size": [8, 8, 8],
            "batch_size": 2,
            "n_channels": 1,
            "labels": labels,
            "num_classes": num,
            "normalization": [{"scheme": "zscore", "use_mask": False}],
            "architecture": {
                "network": "PlainConvUNet",
                "conv_dims": 3,
                "n_stages": 2,
                "features_per_stage": [4, 8],
                "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
                "strides": [[1, 1, 1], [2, 2, 2]],
                "n_conv_per_stage": [1, 1],
                "n_conv_per_stage_decoder": [1],
            },
            **extra,
        }
    )


def test_a_region_plan_lists_its_regions_in_output_order_whatever_the_key_order():
    shuffled = dict(sorted(BRATS_LABELS.items()))  # as a JSON dump with sorted keys would give them back
    plan = _plan(shuffled, regions_class_order=[1, 2, 3], region_names=["whole_tumor", "tumor_core", "enhancing_tumor"])
    assert plan.regions == [("whole_tumor", (1, 2, 3)), ("tumor_core", (2, 3)), ("enhancing_tumor", (3,))]
    assert plan.foreground_labels == [1, 2, 3]  # one score per region
    assert plan.location_classes == {1: (1, 2, 3), 2: (2, 3), 3: (3,)}
    assert ConfigurationPlan.from_dict(plan.to_dict()) == plan


def test_an_ignore_plan_samples_annotated_voxels_and_never_the_ignore_label():
    plan = _plan({"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert plan.ignore_label == 3 and plan.num_classes == 3 and plan.label_value_count == 4
    assert plan.location_classes == {1: (1,), 2: (2,), ANNOTATED_KEY: (0, 1, 2)}


def test_class_locations_of_plain_labels_are_unchanged_and_never_fall_on_ignored_voxels():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (10, 12, 14)).astype(np.uint8)
    label[:, :6] = 3  # ignored
    plain = sample_class_locations(label, [1, 2])
    both = sample_locations_by_class(label, {1: (1,), 2: (2,), ANNOTATED_KEY: (0, 1, 2)})
    for key in (1, 2):
        np.testing.assert_array_equal(both[key], plain[key])
    for key, coords in both.items():
        assert len(coords)
        values = label[tuple(coords.T)]
        assert not np.any(values == 3), key
    regions = sample_locations_by_class(label, {1: (1, 2), 2: (2,)})
    assert set(np.unique(label[tuple(regions[1].T)])) <= {1, 2}


def test_with_an_ignore_label_no_patch_is_centred_on_an_ignored_voxel():
    """nnU-Net's sparse rule: samples that are not forced centre on an annotated voxel, forced ones on a class."""
    shape, read = (20, 20, 20), (8, 8, 8)
    annotated = np.array([[10, 6, 5], [4, 15, 9]], dtype=np.int32)  # away from the low border (no clamping)
    tumour = np.array([[12, 12, 12]], dtype=np.int32)
    case = CaseEntry("c", shape, {ANNOTATED_KEY: annotated, 1: tumour})
    rng = np.random.default_rng(1)
    for _ in range(20):
        for request in sample_batch(
            rng, [case], batch_size=3, read_size=read, patch_size=read, oversample=0.33, annotated_only=True
        ):
            centre = tuple(s + r // 2 for s, r in zip(request.start, read))
            if request.forced_foreground:
                assert centre == tuple(tumour[0])
            else:
                assert centre in {tuple(v) for v in annotated}
    # a case with annotated voxels but no class: forced samples centre on annotated voxels too
    bare = CaseEntry("b", shape, {ANNOTATED_KEY: annotated, 1: np.zeros((0, 3), np.int32)})
    for request in sample_batch(rng, [bare], batch_size=2, read_size=read, patch_size=read, oversample=1.0):
        assert tuple(s + r // 2 for s, r in zip(request.start, read)) in {tuple(v) for v in annotated}


def test_regions_become_a_label_map_as_nnunet_converts_them():
    """Region i above 0.5 writes regions_class_order[i]; later regions overwrite earlier ones."""
    probabilities = np.zeros((3, 1, 1, 6), np.float32)
    probabilities[0, 0, 0] = [0.1, 0.9, 0.9, 0.9, 0.2, 0.6]  # whole tumour
    probabilities[1, 0, 0] = [0.1, 0.1, 0.8, 0.8, 0.9, 0.5]  # tumour core (also outside the whole tumour)
    probabilities[2, 0, 0] = [0.7, 0.1, 0.1, 0.9, 0.1, 0.51]  # enhancing
    seg = regions_to_segmentation(probabilities, [1, 2, 3])
    assert seg.dtype == np.uint16
    assert seg[0, 0].tolist() == [3, 1, 2, 3, 2, 3]
    # the order is nnU-Net's: with the order reversed the first region wins instead
    assert regions_to_segmentation(probabilities[::-1], [3, 2, 1])[0, 0].tolist() == [3, 1, 1, 1, 2, 1]
    assert segmentation_from_probabilities(probabilities, regions_class_order=[1, 2, 3]).tolist() == seg.tolist()
    with pytest.raises(ValueError, match="regions_class_order"):
        regions_to_segmentation(probabilities, [1, 2])


def test_region_metrics_score_the_union_of_a_regions_values_and_leave_ignored_voxels_out():
    ref = np.array([0, 1, 2, 3, 3, 4, 4], np.uint8).reshape(1, 1, 7)
    pred = np.array([0, 1, 3, 3, 0, 1, 3], np.uint8).reshape(1, 1, 7)
    ignore = ref == 4
    rows = case_metrics(pred, ref, labels=REGIONS, spacing=(1, 1, 1), ignore_mask=ignore, surface_metrics=False)
    by_name = {row["region"]: row for row in rows}
    assert [row["label"] for row in rows] == [1, 2, 3]
    assert (by_name["whole_tumor"]["tp"], by_name["whole_tumor"]["fp"], by_name["whole_tumor"]["fn"]) == (3, 0, 1)
    assert (by_name["tumor_core"]["tp"], by_name["tumor_core"]["fp"], by_name["tumor_core"]["fn"]) == (2, 0, 1)
    assert by_name["enhancing_tumor"]["dice"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    plain = case_metrics(pred, ref, labels=[1, 3], spacing=(1, 1, 1), ignore_mask=ignore, surface_metrics=False)
    assert plain[0]["fp"] == 0  # the 1 predicted on an ignored voxel does not count
    assert plain[1]["fp"] == 1 and plain[1]["tp"] == 1


def test_the_postprocessing_decision_leaves_ignored_voxels_out():
    """A stray blob on ignored voxels must not make keeping the largest component look better."""
    ref = np.zeros((1, 12, 12), np.uint8)
    ref[0, 1:5, 1:5] = 1
    ref[0, 7:11, 7:11] = 2  # ignored
    pred = np.zeros_like(ref)
    pred[0, 1:5, 1:5] = 1
    pred[0, 8:10, 8:10] = 1  # a second component, on ignored voxels only
    with_ignore = decide_postprocessing([(pred, ref, (1, 1, 1))], labels=[1], ignore_label=2)
    assert with_ignore["dice_before"] == pytest.approx(1.0)
    assert not with_ignore["foreground_lcc"]
    without = decide_postprocessing([(pred, ref, (1, 1, 1))], labels=[1])
    assert without["foreground_lcc"]


def test_region_postprocessing_is_decided_and_applied_region_by_region():
    ref = np.zeros((1, 16, 16), np.uint8)
    ref[0, 2:10, 2:10] = 1
    ref[0, 4:8, 4:8] = 3
    pred = ref.copy()
    pred[0, 13:15, 13:15] = 3  # a spurious enhancing blob far away
    cases = [(pred, ref, (1, 1, 1))]
    decision = decide_region_postprocessing(lambda: iter(cases), regions=REGIONS)
    assert decision["foreground_lcc"]  # the blob is its own foreground component
    assert decision["dice_after"] == pytest.approx(1.0) and decision["dice_before"] < 1
    assert set(decision["label_dice_after"]) == {"1", "2", "3"}
    assert decision["region_names"] == {"1": "whole_tumor", "2": "tumor_core", "3": "enhancing_tumor"}
    np.testing.assert_array_equal(apply_postprocessing(pred, decision), ref)
    by_region = apply_postprocessing(pred, {"per_region_lcc": [[3]]})
    np.testing.assert_array_equal(by_region, ref)


def test_region_rows_keep_their_names_when_a_label_is_absent():
    from voxelbase.evaluation.metrics import empty_label_metrics

    row = empty_label_metrics(Region(2, "tumor_core", (2, 3)))
    assert row["label"] == 2 and row["region"] == "tumor_core" and row["dice"] is None

"""Largest-component postprocessing and nnU-Net's decision rule, on cases built to need (or not need) it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.results import postprocessing_decision as load_postprocessing
from voxelbase.catalog.results import record_postprocessing
from voxelbase.evaluation.postprocessing import decide_postprocessing
from voxelbase.volumes import apply_postprocessing, keep_largest_component

SPACING = (1.0, 1.0, 1.0)


def blobs(*boxes, shape=(16, 16, 16)) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    for label, (z, y, x, size) in boxes:
        seg[z : z + size, y : y + size, x : x + size] = label
    return seg


def test_keep_largest_component_foreground_and_per_label():
    seg = blobs((1, (0, 0, 0, 4)), (2, (4, 0, 0, 2)), (1, (10, 10, 10, 2)), (2, (12, 0, 12, 3)))
    # foreground as one: labels 1 and 2 touch, forming the largest component (64 + 8 voxels)
    fg = keep_largest_component(seg, labels=None)
    assert (fg[10:12, 10:12, 10:12] == 0).all() and (fg[12:15, 0:3, 12:15] == 0).all()
    assert (fg[0:4, 0:4, 0:4] == 1).all() and (fg[4:6, 0:2, 0:2] == 2).all()
    # per label: label 2 keeps its larger blob (27 > 8); label 1 is untouched by a label-2 step
    per2 = keep_largest_component(seg, labels=[2])
    assert (per2[4:6, 0:2, 0:2] == 0).all() and (per2[12:15, 0:3, 12:15] == 2).all()
    assert (per2 == 1).sum() == (seg == 1).sum()
    assert seg[10, 10, 10] == 1  # input untouched


def test_diagonal_neighbours_are_connected_and_ties_kept():
    seg = np.zeros((6, 6, 6), np.uint8)
    seg[1, 1, 1] = seg[2, 2, 2] = 1  # corner-connected: one component of 2
    seg[4, 4, 4] = seg[4, 4, 5] = 1  # another component of 2: a tie, both kept
    assert (keep_largest_component(seg, labels=None) == seg).all()


def noisy_cases(n=4, *, spurious_label=2):
    """Cases where label 1 is perfect and the prediction adds a far-away blob of `spurious_label`."""
    for i in range(n):
        ref = blobs((1, (1, 1, 1, 6)), (2, (1, 9, 9, 4)))
        pred = ref.copy()
        pred[12 : 14 + i % 2, 12:14, 1:3] = spurious_label
        yield pred, ref, SPACING


def test_decision_removes_spurious_components():
    decision = decide_postprocessing(noisy_cases(), labels=[1, 2])
    # the foreground step would delete label 2 entirely (label 1's blob is largest): rejected
    assert decision["foreground_lcc"] is False
    assert decision["per_label_lcc"] == [2]
    assert decision["dice_after"] > decision["dice_before"]
    assert decision["label_dice_after"]["1"] == 1.0 and decision["label_dice_after"]["2"] == 1.0
    assert decision["n_cases"] == 4
    json.dumps(decision)  # JSON-able


def test_decision_keeps_nothing_when_nothing_helps():
    def clean():
        for _ in range(3):
            ref = blobs((1, (1, 1, 1, 6)), (2, (7, 1, 1, 4)))
            yield ref.copy(), ref, SPACING

    decision = decide_postprocessing(clean(), labels=[1, 2])
    assert decision["foreground_lcc"] is False and decision["per_label_lcc"] == []
    assert decision["dice_before"] == decision["dice_after"] == 1.0


def test_decision_accepts_the_foreground_step_when_it_helps_every_label():
    def cases():
        for _ in range(3):
            ref = blobs((1, (1, 1, 1, 5)), (2, (6, 1, 1, 4)))  # touching: one foreground component
            pred = ref.copy()
            pred[12:14, 12:14, 12:14] = 1
            pred[12:14, 1:3, 12:14] = 2
            yield pred, ref, SPACING

    decision = decide_postprocessing(cases(), labels=[1, 2])
    assert decision["foreground_lcc"] is True and decision["per_label_lcc"] == []
    assert decision["dice_after"] == 1.0
    pred, ref, _ = next(cases())
    assert (apply_postprocessing(pred, decision) == ref).all()


def test_decision_streams_a_generator_once_and_rejects_no_cases():
    seen = []

    def cases():
        for case in noisy_cases(3):
            seen.append(1)
            yield case

    decide_postprocessing(cases(), labels=[1, 2])
    assert len(seen) == 3
    with pytest.raises(ValueError, match="no cases"):
        decide_postprocessing(iter(()), labels=[1, 2])


def test_decision_is_recorded_and_replaced(tmp_path):
    decision = decide_postprocessing(noisy_cases(2), labels=[1, 2])
    with transaction(tmp_path) as con:
        record_postprocessing(con, experiment="e", configuration="3d_fullres", decision={"foreground_lcc": True})
    with transaction(tmp_path) as con:
        record_postprocessing(con, experiment="e", configuration="3d_fullres", decision=decision)
    with connect(tmp_path, read_only=True) as con:
        assert load_postprocessing(con, experiment="e", configuration="3d_fullres") == decision
        assert load_postprocessing(con, experiment="e", configuration="2d") is None
        assert con.execute("SELECT count(*) FROM postprocessing").fetchone()[0] == 1


def test_determine_from_fold_folders_records_the_decision(tmp_path):
    import SimpleITK as sitk

    from voxelbase.evaluation.postprocessing import determine_postprocessing

    refs = tmp_path / "labelsTr"
    refs.mkdir()
    folds = [tmp_path / "fold_0", tmp_path / "fold_1"]
    for i, (pred, ref, _) in enumerate(noisy_cases(4)):
        folds[i % 2].mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(folds[i % 2] / f"c{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(refs / f"c{i}.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    project = tmp_path / "project"
    decision = determine_postprocessing("e", "3d_fullres", pred_dirs=folds, reference_dir=refs, project=project)
    assert decision["per_label_lcc"] == [2] and decision["n_cases"] == 4
    with connect(project, read_only=True) as con:
        assert load_postprocessing(con, experiment="e", configuration="3d_fullres") == decision


def test_matches_nnunet_on_random_cases():
    """Voxels changed by nnU-Net 2.8.1's remove_all_but_largest_component_from_segmentation on the MONAI-checked
    cases of test_metrics (foreground as one: labels [1, 2]; per label: 2), measured with nnU-Net itself."""
    from tests.test_metrics import random_case

    for case, fg_changed, label2_changed in [(0, 691, 122), (1, 778, 48), (5, 712, 160)]:
        pred, _ = random_case(case)
        assert int((keep_largest_component(pred, labels=None) != pred).sum()) == fg_changed
        assert int((keep_largest_component(pred, labels=[2]) != pred).sum()) == label2_changed

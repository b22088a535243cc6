"""Planning rules on their own: nnU-Net's fingerprint in, nnU-Net's plans out (fixtures made by nnU-Net v2)."""

from __future__ import annotations

import json

import pytest

from tests.planning_parity import FIXTURES, PLANS_FILES, fingerprint_from_nnunet, fixture_dirs, parity_problems
from voxelbase.planning import PlanningError, default_splits, plan_experiment
from voxelbase.planning.topology import feature_map_elements, pool_and_conv_layout

CASES = [
    pytest.param(folder, preset, id=f"{folder.name}-{preset}")
    for folder in fixture_dirs()
    for preset in PLANS_FILES
    if (folder / PLANS_FILES[preset]).exists()
]


@pytest.mark.parametrize(("folder", "preset"), CASES)
def test_plans_match_nnunet(folder, preset):
    nnunet_plans = json.loads((folder / PLANS_FILES[preset]).read_text())
    ours = plan_experiment(fingerprint_from_nnunet(folder), preset=preset)
    assert parity_problems(ours, nnunet_plans) == []


def _sampled_fingerprints():
    path = FIXTURES / "sampled_fingerprints.json"
    if not path.exists():
        return []
    return [pytest.param(entry, id=f"{i:02d}-{entry['kind']}") for i, entry in enumerate(json.loads(path.read_text()))]


@pytest.mark.parametrize("entry", _sampled_fingerprints())
def test_plans_match_nnunet_on_sampled_fingerprints(entry):
    """Fingerprints drawn at random (anisotropic, transposed, flat, huge, multi-channel) and planned by nnU-Net."""
    fingerprint = dict(entry["fingerprint"])
    fingerprint.update(
        channel_names=entry["dataset_json"]["channel_names"],
        labels=entry["dataset_json"]["labels"],
        num_training=entry["dataset_json"]["numTraining"],
    )
    for preset, nnunet_plans in entry["plans"].items():
        ours = plan_experiment(fingerprint, preset=preset)
        # the stored plans are reduced to some keys: those are compared, exactly as for whole plans files
        assert parity_problems(ours, nnunet_plans, complete=False) == [], preset


def test_reference_plan_details():
    """The synthetic CT reference, spelled out: the numbers a reader can check by eye."""
    plans = plan_experiment(fingerprint_from_nnunet(FIXTURES))
    full = plans["3d_fullres"]
    assert full["patch_size"] == [48, 96, 96] and full["batch_size"] == 2
    assert full["architecture"]["features_per_stage"] == [32, 64, 128, 256, 320]
    assert full["architecture"]["kernel_sizes"][0] == [1, 3, 3]
    assert full["normalization"][0]["scheme"] == "ct" and full["normalization"][0]["mean"] == pytest.approx(
        86.6298, abs=1e-3
    )
    assert full["previous_stage"] is None and full["batch_dice"] is False
    assert plans["2d"]["batch_size"] == 25 and plans["2d"]["batch_dice"] is True
    assert plans["2d"]["architecture"]["features_per_stage"][-1] == 512
    assert full["resampling"]["anisotropy_threshold"] == 3.0


def test_lowres_and_cascade_when_images_are_large():
    fingerprint = fingerprint_from_nnunet(FIXTURES)
    fingerprint["shapes_after_crop"] = [[s[0] * 4, s[1] * 4, s[2] * 4] for s in fingerprint["shapes_after_crop"]]
    plans = plan_experiment(fingerprint)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans)
    assert plans["3d_cascade_fullres"]["previous_stage"] == "3d_lowres"
    assert plans["3d_fullres"]["batch_dice"] is True and plans["3d_lowres"]["batch_dice"] is False
    low, full = plans["3d_lowres"]["spacing"], plans["3d_fullres"]["spacing"]
    assert all(a >= b for a, b in zip(low, full)) and low[1] > full[1]  # in-plane axes coarsen first


def test_memory_target_too_small_is_an_error():
    with pytest.raises(PlanningError, match="too small for even the smallest patch"):
        plan_experiment(fingerprint_from_nnunet(FIXTURES), gpu_memory_gb=0.0001)


def test_more_memory_never_shrinks_the_patch():
    fingerprint = fingerprint_from_nnunet(FIXTURES)
    fingerprint["shapes_after_crop"] = [[s[0] * 3, s[1] * 3, s[2] * 3] for s in fingerprint["shapes_after_crop"]]
    small = plan_experiment(fingerprint, gpu_memory_gb=4)["3d_fullres"]["patch_size"]
    large = plan_experiment(fingerprint, gpu_memory_gb=16)["3d_fullres"]["patch_size"]
    assert all(a <= b for a, b in zip(small, large)) and small != large


def test_unknown_preset_is_an_error():
    with pytest.raises(PlanningError, match="unknown preset"):
        plan_experiment(fingerprint_from_nnunet(FIXTURES), preset="huge")


def test_feature_map_estimate_matches_dynamic_network_architectures():
    """Values printed by dynamic_network_architectures' compute_conv_feature_map_size for these networks."""
    # ResidualEncoderUNet, 6 stages, 3d, 128^3, deep supervision (quoted in nnU-Net's resenc planner module)
    assert (
        feature_map_elements(
            (128, 128, 128),
            strides=[(1, 1, 1)] + [(2, 2, 2)] * 5,
            features=(32, 64, 128, 256, 320, 320),
            n_conv_encoder=(1, 3, 4, 6, 6, 6),
            n_conv_decoder=(1, 1, 1, 1, 1),
            num_classes=3,
            residual=True,
            deep_supervision=True,
        )
        == 558319104
    )
    assert (
        feature_map_elements(
            (512, 512),
            strides=[(1, 1)] + [(2, 2)] * 6,
            features=(32, 64, 128, 256, 512, 512, 512),
            n_conv_encoder=(1, 3, 4, 6, 6, 6, 6),
            n_conv_decoder=(1, 1, 1, 1, 1, 1),
            num_classes=3,
            residual=True,
            deep_supervision=True,
        )
        == 129793792
    )


def test_pooling_leaves_the_coarse_axis_alone_until_the_others_catch_up():
    layout = pool_and_conv_layout([3.0, 0.8, 0.8], [48, 96, 96])
    assert layout.strides[1] == (1, 2, 2) and layout.strides[2] == (2, 2, 2)
    assert layout.kernel_sizes[0] == (1, 3, 3)
    assert layout.patch_size == (48, 96, 96)


def test_default_splits_match_nnunet():
    reference = json.loads((FIXTURES / "splits_final.json").read_text())
    assert default_splits([f"case_{i:04d}" for i in range(12)]) == reference
    with pytest.raises(ValueError, match="at least 5"):
        default_splits(["a", "b"])

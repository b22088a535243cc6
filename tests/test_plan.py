"""The typed plan: parsed once from the artifact, `to_dict` gives the artifact back, a bad plan names its key."""

from __future__ import annotations

import json

import pytest

from tests.planning_parity import fingerprint_from_nnunet, fixture_dirs
from voxelbase.plan import ConfigurationPlan, Plan, PlanFormatError
from voxelbase.planning import plan_experiment

FOLDERS = [pytest.param(folder, id=folder.name) for folder in fixture_dirs()]


@pytest.mark.parametrize("folder", FOLDERS)
@pytest.mark.parametrize("preset", ["nnunet", "resenc-l"])
def test_round_trip_equals_the_artifact(folder, preset):
    """Every configuration the planner makes (2d, 3d_fullres, 3d_lowres, cascade) survives a JSON round trip."""
    planned = plan_experiment(fingerprint_from_nnunet(folder), preset=preset)
    artifact = json.loads(json.dumps({"configurations": planned}))
    plan = Plan.from_dict(artifact)
    assert plan.to_dict() == artifact
    assert set(plan.configurations) == set(planned)
    for name, configuration in plan.configurations.items():
        assert configuration.configuration == name
        assert configuration.num_classes == planned[name]["num_classes"]
        assert configuration.architecture.strides == tuple(tuple(s) for s in planned[name]["architecture"]["strides"])


def _one_configuration() -> dict:
    folder = fixture_dirs()[0]
    return json.loads(json.dumps(plan_experiment(fingerprint_from_nnunet(folder))["3d_fullres"]))


def test_values_are_typed_and_frozen():
    plan = ConfigurationPlan.from_dict(_one_configuration())
    assert isinstance(plan.patch_size, tuple) and all(isinstance(p, int) for p in plan.patch_size)
    assert plan.foreground_labels == list(range(1, plan.num_classes))
    assert plan.normalization[0].scheme in ("ct", "zscore")
    with pytest.raises(AttributeError):
        plan.batch_size = 3  # type: ignore[misc]


def test_keys_it_does_not_know_are_kept():
    data = {**_one_configuration(), "added_by_a_newer_version": {"x": 1}}
    plan = ConfigurationPlan.from_dict(data)
    assert plan.to_dict() == data


@pytest.mark.parametrize("key", ["patch_size", "architecture", "num_classes", "normalization"])
def test_a_missing_key_is_named(key):
    data = _one_configuration()
    del data[key]
    with pytest.raises(PlanFormatError, match=f"lacks '{key}'"):
        ConfigurationPlan.from_dict(data)


def test_a_plan_without_resampling_gets_nnunets_defaults():
    """Plans made before `resampling` was recorded preprocess as nnU-Net does."""
    data = _one_configuration()
    del data["resampling"]
    plan = ConfigurationPlan.from_dict(data)
    assert (plan.resampling.image_order, plan.resampling.label_order, plan.resampling.order_z) == (3, 1, 0)


def test_2d_keeps_the_case_slice_spacing():
    data = {**_one_configuration(), "spacing": [0.8, 0.8]}
    assert ConfigurationPlan.from_dict(data).target_spacing((5.0, 0.7, 0.7)) == (5.0, 0.8, 0.8)


def test_folds_that_preprocess_differently_are_told_apart():
    one = ConfigurationPlan.from_dict(_one_configuration())
    other = ConfigurationPlan.from_dict({**_one_configuration(), "spacing": [9.0, 9.0, 9.0]})
    assert one.preprocessing_agrees(one) is None
    assert "spacing" in one.preprocessing_agrees(other)

"""The SQL fingerprint and `plan_dataset` on freshly ingested data, against nnU-Net's reference output.

The data is the project's demo dataset, regenerated with the call nnU-Net's reference in
`tests/fixtures/nnunet_demo_ct/` was made from (`tests.conftest.NNUNET_DEMO_DATA`; the generator is deterministic for a
seed, and the fixture checks it still writes the same volumes).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import NNUNET_DEMO_DATA
from tests.planning_parity import DEMO_FIXTURES, PLANS_FILES, parity_problems
from voxelbase.catalog import connect
from voxelbase.ingest import ingest_dataset
from voxelbase.plan import Plan
from voxelbase.planning import load_fingerprint, load_plan, load_splits, plan_dataset

N_TRAINING = NNUNET_DEMO_DATA["cases"]
# Foreground intensity statistics, allowed difference from nnU-Net's as a fraction of its 0.5-99.5 percentile range.
# Neither side is exact: nnU-Net estimates mean and std from 10^7 voxels per case drawn with replacement (in float32),
# Voxelbase takes exact per-case moments and its median and percentiles from 10,000 drawn voxels per case. Measured
# on the reference data: mean and std within 2.3e-5 of the range, median and percentiles equal; min and max are
# exact on both sides and compared exactly.
SAMPLED_STATISTICS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def reference_project(tmp_path_factory, nnunet_demo_raw):
    """nnU-Net's reference demo dataset (10 training + 2 test cases, seed 0), ingested as 'demo'."""
    project = tmp_path_factory.mktemp("planning") / "project"
    ingest_dataset(nnunet_demo_raw, name="demo", project=project, workers=1)
    return project


def test_sql_fingerprint_matches_nnunet(reference_project):
    reference = json.loads((DEMO_FIXTURES / "dataset_fingerprint.json").read_text())
    with connect(reference_project, read_only=True) as con:
        ours = load_fingerprint(con, "demo")
    assert ours["shapes_after_crop"] == reference["shapes_after_crop"]
    assert ours["spacings"] == reference["spacings"]  # both as SimpleITK reads them
    assert ours["median_relative_size_after_cropping"] == reference["median_relative_size_after_cropping"]
    for channel, theirs in reference["foreground_intensity_properties_per_channel"].items():
        mine = ours["foreground_intensity_properties_per_channel"][channel]
        assert mine["min"] == theirs["min"] and mine["max"] == theirs["max"]
        tolerance = SAMPLED_STATISTICS_TOLERANCE * (theirs["percentile_99_5"] - theirs["percentile_00_5"])
        for key in ("mean", "std", "median", "percentile_00_5", "percentile_99_5"):
            assert abs(mine[key] - theirs[key]) <= tolerance, key


def test_fingerprint_views_are_plain_sql(reference_project):
    """What a user sees with `voxelbase sql`: per-axis median and 10th percentile spacing, median crop shape."""
    with connect(reference_project, read_only=True) as con:
        row = con.execute(
            "SELECT n_training_cases, median_spacing, p10_spacing, median_shape_after_crop, "
            "median_relative_size_after_cropping FROM fingerprint WHERE dataset = 'demo'"
        ).fetchone()
        channels = con.execute(
            "SELECT channel, channel_name FROM fingerprint_intensity WHERE dataset = 'demo'"
        ).fetchall()
    plans = json.loads((DEMO_FIXTURES / "nnUNetPlans.json").read_text())
    assert row[0] == N_TRAINING
    assert row[1] == pytest.approx(plans["original_median_spacing_after_transp"], rel=1e-9)
    assert all(p10 <= median for p10, median in zip(row[2], row[1]))
    assert [round(v) for v in row[3]] == plans["original_median_shape_after_transp"]
    assert row[4] == 1.0 and channels == [(0, "CT")]


@pytest.mark.parametrize("preset", list(PLANS_FILES))
def test_plan_dataset_matches_nnunet(reference_project, preset):
    """Catalog in, plans table and artifact out, on par with nnU-Net's plans for the same data."""
    result = plan_dataset("demo", project=reference_project, preset=preset)
    nnunet_plans = json.loads((DEMO_FIXTURES / PLANS_FILES[preset]).read_text())
    planned = {name: c.to_dict() for name, c in result.configurations.items()}
    assert parity_problems(planned, nnunet_plans, intensity_tolerance=SAMPLED_STATISTICS_TOLERANCE) == []
    artifact = json.loads(result.artifact.read_text())["configurations"]
    assert artifact == planned
    assert Plan.from_dict({"configurations": artifact}).to_dict() == {"configurations": artifact}  # round trip
    stored = load_plan(reference_project, "demo", configuration="3d_fullres", plan=result.plan)
    assert stored == result.configurations["3d_fullres"]
    assert stored.plan == result.plan and stored.dataset == "demo" and stored.dataset_hash


def test_splits_match_nnunet(reference_project):
    plan_dataset("demo", project=reference_project)
    reference = json.loads((DEMO_FIXTURES / "splits_final.json").read_text())
    splits = load_splits(reference_project, "demo")
    assert list(splits) == ["0", "1", "2", "3", "4"]
    assert [splits[str(k)] for k in range(5)] == reference


def test_replanning_is_deterministic_and_presets_sit_side_by_side(reference_project):
    first = plan_dataset("demo", project=reference_project)
    text = first.artifact.read_text()
    with connect(reference_project, read_only=True) as con:
        before = con.execute("SELECT plan, configuration, plan_json FROM plans ORDER BY ALL").fetchall()
    again = plan_dataset("demo", project=reference_project)
    assert again.artifact.read_text() == text
    other = plan_dataset("demo", project=reference_project, preset="resenc-l")
    custom = plan_dataset("demo", project=reference_project, gpu_memory_gb=12)
    assert (first.plan, other.plan, custom.plan) == ("nnunet-8gb", "resenc-l-24gb", "nnunet-12gb")
    with connect(reference_project, read_only=True) as con:
        after = con.execute("SELECT plan, configuration, plan_json FROM plans ORDER BY ALL").fetchall()
        duplicates = con.execute(
            "SELECT count(*) FROM (SELECT dataset, plan, configuration FROM plans GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
        splits = con.execute("SELECT count(*) FROM splits WHERE dataset = 'demo'").fetchone()[0]
    assert [r for r in after if r[0] == "nnunet-8gb"] == [r for r in before if r[0] == "nnunet-8gb"]
    assert {r[0] for r in after} >= {"nnunet-8gb", "resenc-l-24gb", "nnunet-12gb"}
    assert duplicates == 0 and splits == 5 * N_TRAINING
    newest = load_plan(reference_project, "demo", configuration="2d")
    assert newest.plan == "nnunet-12gb"

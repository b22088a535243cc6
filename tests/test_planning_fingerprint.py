"""The SQL fingerprint and `plan_dataset` on freshly ingested data, against nnU-Net's reference output.

The data is regenerated with the shared generator (`../shared/data/synth.py`, deterministic for a seed), the
same command the reference was made with; skipped when the generator is not there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.catalog import connect
from engine.ingest import ingest_dataset
from engine.plan import Plan
from engine.planning import load_fingerprint, load_plan, load_splits, plan_dataset
from tests.planning_parity import FIXTURES, PLANS_FILES, parity_problems

SYNTH = Path(__file__).resolve().parents[2] / "shared" / "data" / "synth.py"
needs_synth = pytest.mark.skipif(not SYNTH.exists(), reason=f"data generator not found at {SYNTH}")


def make_synth(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(SYNTH), str(out), *args], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def reference_project(tmp_path_factory):
    """The shared reference dataset (12 training + 2 test cases, seed 0), ingested as 'synth'."""
    if not SYNTH.exists():
        pytest.skip(f"data generator not found at {SYNTH}")
    root = tmp_path_factory.mktemp("planning")
    source = make_synth(root / "Dataset901_Synth", "--cases", "12", "--test-cases", "2", "--seed", "0")
    project = root / "project"
    ingest_dataset(source, name="synth", project=project, workers=1)
    return project


@needs_synth
def test_sql_fingerprint_matches_nnunet(reference_project):
    reference = json.loads((FIXTURES / "dataset_fingerprint.json").read_text())
    with connect(reference_project, read_only=True) as con:
        ours = load_fingerprint(con, "synth")
    assert ours["shapes_after_crop"] == reference["shapes_after_crop"]
    for mine, theirs in zip(ours["spacings"], reference["spacings"]):
        assert mine == pytest.approx(theirs, rel=1e-6)
    assert ours["median_relative_size_after_cropping"] == pytest.approx(
        reference["median_relative_size_after_cropping"]
    )
    for channel, theirs in reference["foreground_intensity_properties_per_channel"].items():
        mine = ours["foreground_intensity_properties_per_channel"][channel]
        assert mine["min"] == theirs["min"] and mine["max"] == theirs["max"]
        tolerance = 0.01 * (theirs["percentile_99_5"] - theirs["percentile_00_5"])
        for key in ("mean", "std", "median", "percentile_00_5", "percentile_99_5"):
            assert abs(mine[key] - theirs[key]) <= tolerance, key


@needs_synth
def test_fingerprint_views_are_plain_sql(reference_project):
    """What a user sees with `voxelbase sql`: per-axis median and 10th percentile spacing, median crop shape."""
    with connect(reference_project, read_only=True) as con:
        row = con.execute(
            "SELECT n_training_cases, median_spacing, p10_spacing, median_shape_after_crop, "
            "median_relative_size_after_cropping FROM fingerprint WHERE dataset = 'synth'"
        ).fetchone()
        channels = con.execute(
            "SELECT channel, channel_name FROM fingerprint_intensity WHERE dataset = 'synth'"
        ).fetchall()
    plans = json.loads((FIXTURES / "nnUNetPlans.json").read_text())
    assert row[0] == 12
    assert row[1] == pytest.approx(plans["original_median_spacing_after_transp"], rel=1e-9)
    assert all(p10 <= median for p10, median in zip(row[2], row[1]))
    assert [round(v) for v in row[3]] == plans["original_median_shape_after_transp"]
    assert row[4] == 1.0 and channels == [(0, "CT")]


@needs_synth
@pytest.mark.parametrize("preset", list(PLANS_FILES))
def test_plan_dataset_matches_nnunet(reference_project, preset):
    """Catalog in, plans table and artifact out, on par with nnU-Net's plans for the same data."""
    result = plan_dataset("synth", project=reference_project, preset=preset)
    nnunet_plans = json.loads((FIXTURES / PLANS_FILES[preset]).read_text())
    planned = {name: c.to_dict() for name, c in result.configurations.items()}
    assert parity_problems(planned, nnunet_plans) == []
    artifact = json.loads(result.artifact.read_text())["configurations"]
    assert artifact == planned
    assert Plan.from_dict({"configurations": artifact}).to_dict() == {"configurations": artifact}  # round trip
    stored = load_plan(reference_project, "synth", configuration="3d_fullres", plan=result.plan)
    assert stored == result.configurations["3d_fullres"]
    assert stored.plan == result.plan and stored.dataset == "synth" and stored.dataset_hash


@needs_synth
def test_splits_match_nnunet(reference_project):
    plan_dataset("synth", project=reference_project)
    reference = json.loads((FIXTURES / "splits_final.json").read_text())
    splits = load_splits(reference_project, "synth")
    assert list(splits) == ["0", "1", "2", "3", "4"]
    assert [splits[str(k)] for k in range(5)] == reference


@needs_synth
def test_replanning_is_deterministic_and_presets_sit_side_by_side(reference_project):
    first = plan_dataset("synth", project=reference_project)
    text = first.artifact.read_text()
    with connect(reference_project, read_only=True) as con:
        before = con.execute("SELECT plan, configuration, plan_json FROM plans ORDER BY ALL").fetchall()
    again = plan_dataset("synth", project=reference_project)
    assert again.artifact.read_text() == text
    other = plan_dataset("synth", project=reference_project, preset="resenc-l")
    custom = plan_dataset("synth", project=reference_project, gpu_memory_gb=12)
    assert (first.plan, other.plan, custom.plan) == ("nnunet-8gb", "resenc-l-24gb", "nnunet-12gb")
    with connect(reference_project, read_only=True) as con:
        after = con.execute("SELECT plan, configuration, plan_json FROM plans ORDER BY ALL").fetchall()
        duplicates = con.execute(
            "SELECT count(*) FROM (SELECT dataset, plan, configuration FROM plans GROUP BY ALL HAVING count(*) > 1)"
        ).fetchone()[0]
        splits = con.execute("SELECT count(*) FROM splits WHERE dataset = 'synth'").fetchone()[0]
    assert [r for r in after if r[0] == "nnunet-8gb"] == [r for r in before if r[0] == "nnunet-8gb"]
    assert {r[0] for r in after} >= {"nnunet-8gb", "resenc-l-24gb", "nnunet-12gb"}
    assert duplicates == 0 and splits == 5 * 12
    newest = load_plan(reference_project, "synth", configuration="2d")
    assert newest.plan == "nnunet-12gb"

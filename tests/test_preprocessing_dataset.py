"""`voxelbase preprocess`: stored cases equal the pure function, catalog rows, incremental runs, bad input, kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import zarr

from tests.conftest import catalog_snapshot, run_cli
from voxelbase.catalog import connect
from voxelbase.catalog.preprocessed import case_properties, class_locations
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.plan import ConfigurationPlan
from voxelbase.planning import plan_dataset
from voxelbase.preprocessing.case import preprocess_case
from voxelbase.preprocessing.class_locations import sample_count
from voxelbase.preprocessing.dataset import PreprocessingError, preprocess_dataset
from voxelbase.project import Project
from voxelbase.store import read_case

REPO = Path(__file__).resolve().parents[1]
DATASET = "demo"
N_CASES = 6


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Project:
    """A project with the demo CT ingested and planned (built once, copied per test)."""
    root = tmp_path_factory.mktemp("planned")
    raw = write_demo_dataset(root / "raw", cases=N_CASES, test_cases=1, seed=3, shape=(20, 40, 40))
    project = Project.resolve(root / "project")
    ingest_dataset(raw, name=DATASET, project=project, workers=1)
    plan_dataset(DATASET, project=project)
    return project


@pytest.fixture
def project(planned, tmp_path) -> Project:
    copy = tmp_path / "project"
    shutil.copytree(planned.root, copy)
    return Project.resolve(copy)


def plan_of(project: Project, configuration: str = "3d_fullres") -> tuple[str, ConfigurationPlan]:
    with duckdb.connect(str(project.catalog_path), read_only=True) as con:
        name, text = con.execute(
            "SELECT plan, plan_json FROM plans WHERE dataset = ? AND configuration = ?", [DATASET, configuration]
        ).fetchone()
    return name, ConfigurationPlan.from_dict(json.loads(text))


def rows(project: Project, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(project.catalog_path), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def case_ids(project: Project) -> list[str]:
    return [
        r[0]
        for r in rows(project, "SELECT case_id FROM cases WHERE dataset = ? AND split = 'train' ORDER BY 1", [DATASET])
    ]


def stage(project: Project, plan: str, configuration: str = "3d_fullres") -> Path:
    return project.store_path / DATASET / plan / configuration


def test_stored_cases_equal_the_pure_function_and_are_recorded(project):
    result = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    plan_name, plan = plan_of(project)
    assert result.processed == tuple(case_ids(project)) and result.skipped == ()
    with connect(project, read_only=True) as con:
        locations = class_locations(con, DATASET, plan=plan_name, configuration="3d_fullres")
    for case_id in case_ids(project):
        raw_image, raw_label = read_case(project, DATASET, case_id)
        spacing = rows(project, "SELECT spacing FROM cases WHERE dataset = ? AND case_id = ?", [DATASET, case_id])[0][0]
        expected_image, expected_label, props = preprocess_case(raw_image, raw_label, spacing=spacing, plan=plan)
        image = zarr.open_array(str(stage(project, plan_name) / case_id / "image"), mode="r")
        label = zarr.open_array(str(stage(project, plan_name) / case_id / "label"), mode="r")
        assert image.dtype == np.float32 and label.dtype == np.int8
        np.testing.assert_array_equal(image[...], expected_image)
        np.testing.assert_array_equal(label[...], expected_label)
        assert image.chunks[1:] == tuple(min(s, -(-p // 2)) for s, p in zip(image.shape[1:], plan.patch_size))
        with connect(project, read_only=True) as con:
            stored = case_properties(con, DATASET, case_id, plan=plan_name, configuration="3d_fullres")
        assert stored["shape_after_resampling"] == list(image.shape[1:]) and stored["bbox"] == props["bbox"]
        for value in (1, 2):
            coords = locations[case_id].get(value, np.zeros((0, 3), int))
            n = int((label[...] == value).sum())
            assert len(coords) == (sample_count(n) if n else 0)
            assert (label[...][tuple(coords.T)] == value).all()  # every location lies inside its label


def test_second_run_skips_everything_and_a_changed_case_is_redone(project):
    preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    plan_name, _ = plan_of(project)
    before = catalog_snapshot(project)
    again = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    assert again.processed == () and len(again.skipped) == N_CASES
    assert catalog_snapshot(project)["files"] == before["files"]
    changed = case_ids(project)[2]
    with duckdb.connect(str(project.catalog_path)) as con:  # as if its source bytes had changed
        con.execute("UPDATE cases SET content_hash = 'different' WHERE dataset = ? AND case_id = ?", [DATASET, changed])
    third = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=2, progress=False)
    assert third.processed == (changed,) and len(third.skipped) == N_CASES - 1
    assert len(rows(project, "SELECT * FROM preprocessed_cases")) == N_CASES


def test_configuration_never_planned_is_a_clear_error_and_changes_nothing(project):
    before = catalog_snapshot(project)
    with pytest.raises(PreprocessingError, match="'3d_lowres' was never planned.*it has: 2d, 3d_fullres"):
        preprocess_dataset(DATASET, configuration="3d_lowres", project=project, progress=False)
    with pytest.raises(PreprocessingError, match="dataset 'nope' does not exist"):
        preprocess_dataset("nope", configuration="3d_fullres", project=project, progress=False)
    assert catalog_snapshot(project) == before
    result = run_cli(project, "preprocess", DATASET, "--configuration", "3d_lowres", expect_ok=False)
    assert result.exit_code != 0 and "never planned" in result.output


def test_stale_plan_says_to_replan_and_changes_nothing(project):
    preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    with duckdb.connect(str(project.catalog_path)) as con:  # as if the dataset had been re-ingested since planning
        con.execute("UPDATE datasets SET content_hash = 'reingested' WHERE name = ?", [DATASET])
    before = catalog_snapshot(project)
    with pytest.raises(PreprocessingError, match="stale.*re-ingested.*voxelbase plan demo"):
        preprocess_dataset(DATASET, configuration="3d_fullres", project=project, progress=False)
    assert catalog_snapshot(project) == before


def test_interrupted_writes_are_cleaned_up_and_redone(project):
    preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    plan_name, _ = plan_of(project)
    folder = stage(project, plan_name)
    ids = case_ids(project)
    leftover = folder / f".{ids[0]}.partial-12345"  # what a killed worker leaves
    shutil.copytree(folder / ids[0], leftover)
    (folder / ids[1] / ".input_hash").unlink()  # a case folder whose completion cannot be trusted
    shutil.rmtree(folder / ids[2])  # a recorded case whose folder is gone
    result = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    assert result.processed == (ids[1], ids[2])
    assert not leftover.exists()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ids


def test_a_failing_case_is_reported_and_the_others_are_kept(project):
    plan_name, _ = plan_of(project)
    folder = stage(project, plan_name)
    folder.mkdir(parents=True)
    bad = case_ids(project)[1]
    (folder / bad).write_text("not a case folder")  # the case cannot be written there
    with pytest.raises(PreprocessingError, match=f"(?s)1 case\\(s\\).*{bad}.*could not write"):
        preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    recorded = [r[0] for r in rows(project, "SELECT case_id FROM preprocessed_cases ORDER BY 1")]
    assert recorded == [c for c in case_ids(project) if c != bad]
    (folder / bad).unlink()
    result = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    assert result.processed == (bad,)


def test_killed_run_is_finished_by_the_next_run(project):
    plan_name, _ = plan_of(project)
    folder = stage(project, plan_name)
    code = (
        "from voxelbase.preprocessing.dataset import preprocess_dataset\n"
        f"preprocess_dataset({DATASET!r}, configuration='3d_fullres', project={str(project.root)!r}, workers=1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir() if p.is_dir()):
                break
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    done_before = rows(project, "SELECT count(*) FROM preprocessed_cases")[0][0]
    assert done_before < N_CASES, "the run finished before it could be killed"
    result = preprocess_dataset(DATASET, configuration="3d_fullres", project=project, workers=1, progress=False)
    assert len(result.processed) + len(result.skipped) == N_CASES
    assert len(rows(project, "SELECT * FROM preprocessed_cases")) == N_CASES
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == case_ids(project)  # no partial folders
    for case_id in case_ids(project):
        image = zarr.open_array(str(folder / case_id / "image"), mode="r")[...]
        assert np.isfinite(image).all()


def test_cli_preprocess(project):
    result = run_cli(project, "preprocess", DATASET, "--configuration", "2d", "--workers", "1")
    assert f"preprocessed {N_CASES} case(s)" in result.output
    result = run_cli(project, "preprocess", DATASET, "-c", "2d")
    assert f"({N_CASES} already up to date)" in result.output

"""Bad input to the planner: each a clear error, and the catalog (and plan folder) exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from voxelbase.catalog import connect
from voxelbase.cli import cli
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import PlanningError, plan_dataset

SMALL = {"cases": 5, "test_cases": 0, "seed": 7, "shape": (16, 32, 32)}


def _demo(out: Path) -> Path:
    return write_demo_dataset(out, **SMALL)


def _add_channel(root: Path, name: str, values) -> None:
    """A second channel for every training image: `values(first channel array)`, same geometry."""
    for first in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
        image = sitk.ReadImage(str(first))
        out = sitk.GetImageFromArray(values(sitk.GetArrayFromImage(image)))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(first.with_name(first.name.replace("_0000.nii.gz", "_0001.nii.gz"))))
    description = json.loads((root / "dataset.json").read_text())
    description["channel_names"]["1"] = name
    (root / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")


def _rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(image))
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A catalog with a good, already planned dataset and three bad ones."""
    root = tmp_path_factory.mktemp("planning_errors")
    project = root / "project"
    ingest_dataset(_demo(root / "good"), name="good", project=project, workers=1)
    plan_dataset("good", project=project)

    background = _demo(root / "background_only")
    for label in (background / "labelsTr").glob("*.nii.gz"):
        _rewrite(label, np.zeros_like)
    ingest_dataset(background, name="background_only", project=project, workers=1)

    empty = _demo(root / "empty_crop")
    _rewrite(empty / "imagesTr" / "demo_002_0000.nii.gz", np.zeros_like)
    ingest_dataset(empty, name="empty_crop", project=project, workers=1)

    constant = _demo(root / "constant_channel")
    _add_channel(constant, "MR1", lambda a: np.full_like(a, 7))
    ingest_dataset(constant, name="constant_channel", project=project, workers=1)
    return project


def snapshot(project: Path) -> dict:
    """Every row of every catalog table, and the files under plans/."""
    with connect(project, read_only=True) as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1"
            ).fetchall()
        ]
        rows = {t: con.execute(f'SELECT * FROM "{t}" ORDER BY ALL').fetchall() for t in tables}
    files = sorted(str(p.relative_to(project)) for p in (project / "plans").rglob("*"))
    return {"rows": rows, "files": files}


@pytest.mark.parametrize(
    ("dataset", "options", "message"),
    [
        ("missing", {}, r"dataset 'missing' does not exist \(known datasets: background_only, constant_channel"),
        ("background_only", {}, r"dataset 'background_only' has no labelled training cases"),
        ("empty_crop", {}, r"crop to nonzero of case 'demo_002' is empty"),
        ("constant_channel", {}, r"channel 1 \(MR1\) is constant \(7\.0\)"),
        ("good", {"gpu_memory_gb": 0.0001}, r"GPU memory target 0\.0001 GB is too small for even the smallest patch"),
        ("good", {"preset": "resenc-xxl"}, r"unknown preset 'resenc-xxl'"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(project, dataset, options, message):
    before = snapshot(project)
    with pytest.raises(PlanningError, match=message):
        plan_dataset(dataset, project=project, **options)
    assert snapshot(project) == before


def test_no_catalog_is_not_created(tmp_path):
    with pytest.raises(PlanningError, match="does not exist"):
        plan_dataset("anything", project=tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_cli_reports_the_error_without_a_traceback(project):
    before = snapshot(project)
    result = CliRunner().invoke(cli, ["--project", str(project), "plan", "empty_crop"])
    assert result.exit_code != 0
    assert "Error: dataset 'empty_crop'" in result.output and "Traceback" not in result.output
    assert snapshot(project) == before


def test_cli_prints_the_plans(project):
    result = CliRunner().invoke(cli, ["--project", str(project), "plan", "good", "--preset", "resenc-m"])
    assert result.exit_code == 0, result.output
    assert "resenc-m-8gb" in result.output and "3d_fullres" in result.output and "2d" in result.output

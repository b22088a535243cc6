"""Model bundles: `export` an experiment, `predict --model` with no project, `import-model` into another project;
altered or missing files are refused by name before anything is predicted."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import catalog_snapshot, run_cli
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.project import Project

SPEC = """
name = "exp"
dataset = "demo"
[ingest]
source = "raw"
[train]
configurations = ["3d_fullres"]
folds = [0, 1]
epochs = 1
iterations_per_epoch = 2
val_iterations = 1
num_workers = 1
[predict]
tta = false
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny experiment run end to end (2 folds, selection, postprocessing) and its own predictions."""
    root = tmp_path_factory.mktemp("bundle")
    write_demo_dataset(root / "raw", cases=6, test_cases=2, seed=5, shape=(12, 24, 24))
    (root / "spec.toml").write_text(SPEC)
    project = Project.resolve(root / "project")
    run_cli(project, "run", str(root / "spec.toml"))
    inputs = root / "raw" / "imagesTs"
    reference = root / "reference"
    run_cli(project, "predict", "-e", "exp", "--input", str(inputs), "--output", str(reference))
    folder = root / "exp-bundle"
    run_cli(project, "export", "exp", "--output", str(folder))
    return project, inputs, reference, folder


def _volumes(folder):
    found = {}
    for path in sorted(folder.iterdir()):
        image = sitk.ReadImage(str(path))
        found[path.name] = (sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return found


def _assert_same_segmentations(folder, reference):
    got, expected = _volumes(folder), _volumes(reference)
    assert sorted(got) == sorted(expected) and len(got) == 2
    for name, (array, *geometry) in expected.items():
        np.testing.assert_array_equal(got[name][0], array)
        assert got[name][0].dtype == array.dtype
        assert tuple(got[name][1:]) == tuple(geometry)


def test_manifest_lists_the_models_and_every_file(trained):
    project, _, _, folder = trained
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["experiment"] == "exp"
    assert manifest["configurations"] == {"3d_fullres": ["0", "1"]}
    assert manifest["choice"] == "3d_fullres" and manifest["selection"]["choice"] == "3d_fullres"
    assert set(manifest["postprocessing"]) == {"3d_fullres"}
    assert manifest["channel_names"] == ["CT"] and manifest["file_ending"] == ".nii.gz"
    assert manifest["labels"]["background"] == 0 and manifest["spec"]["name"] == "exp"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == sorted([*manifest["files"], "manifest.json"])
    assert set(manifest["files"]) == {
        "plans/3d_fullres.json",
        "weights/3d_fullres/fold_0.safetensors",
        "weights/3d_fullres/fold_1.safetensors",
    }
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest


def test_predict_with_a_bundle_needs_no_project(trained, tmp_path, monkeypatch):
    project, inputs, reference, folder = trained
    archive = tmp_path / "exp.zip"
    run_cli(project, "export", "exp", "--output", str(archive))
    assert zipfile.is_zipfile(archive)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    empty = Project.resolve(elsewhere / "empty-project")
    for i, bundle in enumerate((folder, archive)):
        out = elsewhere / f"out{i}"
        result = run_cli(empty, "predict", "--model", str(bundle), "--input", str(inputs), "--output", str(out))
        assert "wrote 2 segmentation(s)" in result.output
        _assert_same_segmentations(out, reference)
    assert not empty.root.exists()  # no catalog, nothing written into the project


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("weights/3d_fullres/fold_1.safetensors", "alter"),
        ("plans/3d_fullres.json", "remove"),
    ],
)
def test_a_damaged_bundle_is_refused_naming_the_file(trained, tmp_path, name, damage):
    _, inputs, _, folder = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(folder, bundle)
    if damage == "alter":
        data = bytearray((bundle / name).read_bytes())
        data[-1] ^= 1
        (bundle / name).write_bytes(bytes(data))
    else:
        (bundle / name).unlink()
    out = tmp_path / "out"
    result = run_cli(
        Project.resolve(tmp_path / "p"), "predict", "-m", str(bundle), "--input", str(inputs), "--output", str(out),
        expect_ok=False,
    )  # fmt: skip
    assert result.exit_code == 1 and name in result.output
    assert ("altered" if damage == "alter" else "missing") in result.output
    assert not out.exists()


def test_export_refuses_an_existing_path_unless_replace(trained, tmp_path):
    project, _, _, folder = trained
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    result = run_cli(project, "export", "exp", "--output", str(folder), expect_ok=False)
    assert result.exit_code == 1 and "--replace" in result.output
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    target = tmp_path / "again"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    run_cli(project, "export", "exp", "--output", str(target), "--folds", "0", "--replace")
    assert json.loads((target / "manifest.json").read_text())["configurations"] == {"3d_fullres": ["0"]}
    assert not (target / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_predict_needs_exactly_one_model_source(trained, tmp_path):
    project, inputs, _, folder = trained
    args = ["predict", "--input", str(inputs), "--output", str(tmp_path / "out")]
    neither = run_cli(project, *args, expect_ok=False)
    both = run_cli(project, *args, "-e", "exp", "-m", str(folder), expect_ok=False)
    assert neither.exit_code == 1 and "--experiment" in neither.output and "--model" in neither.output
    assert both.exit_code == 1 and "not both" in both.output


def test_import_model_then_predict_by_experiment(trained, tmp_path):
    _, inputs, reference, folder = trained
    other = Project.resolve(tmp_path / "other")
    result = run_cli(other, "import-model", str(folder), "--name", "imported")
    assert "2 trained fold(s)" in result.output
    out = tmp_path / "out"
    run_cli(other, "predict", "-e", "imported", "--input", str(inputs), "--output", str(out))
    _assert_same_segmentations(out, reference)
    rows = run_cli(
        other, "sql", "SELECT configuration, fold, status FROM runs WHERE experiment = 'imported'", "--format", "json"
    ).output
    assert sorted((r["fold"], r["status"]) for r in json.loads(rows)) == [("0", "finished"), ("1", "finished")]

    snapshot = catalog_snapshot(other)
    checkpoint = other.run_dir("imported", "3d_fullres", "0") / "checkpoint_final.pt"
    before = checkpoint.read_bytes()
    again = run_cli(other, "import-model", str(folder), "--name", "imported", expect_ok=False)
    assert again.exit_code == 1 and "already exists" in again.output
    assert catalog_snapshot(other) == snapshot and checkpoint.read_bytes() == before
    run_cli(other, "import-model", str(folder), "--name", "imported", "--replace")
    count = run_cli(other, "sql", "SELECT count(*) AS n FROM runs WHERE experiment = 'imported'", "--format", "json")
    assert json.loads(count.output) == [{"n": 2}]  # replaced, not added to
    out2 = tmp_path / "out2"
    run_cli(other, "predict", "-e", "imported", "--input", str(inputs), "--output", str(out2))
    _assert_same_segmentations(out2, reference)

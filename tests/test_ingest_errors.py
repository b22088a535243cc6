"""Bad input: a clear error naming the file and the problem, and nothing already stored is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import TINY_SHAPE, catalog_snapshot, run_cli
from tests.test_images import make_big_endian, nifti_payload
from voxelbase.ingest import IngestError, ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset


@pytest.fixture
def stored(tmp_path, project, tiny_raw):
    """A project that already holds dataset 'good', and a fresh copy of the raw data to spoil."""
    ingest_dataset(tiny_raw, name="good", project=project, workers=1)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_raw, bad)
    return project, bad, catalog_snapshot(project)


def _rewrite(path: Path, change) -> None:
    image = sitk.ReadImage(str(path))
    changed = change(image)
    sitk.WriteImage(changed, str(path))


def _assert_rejected(project, source: Path, before: dict, *fragments: str, workers: int = 1) -> None:
    result = run_cli(project, "ingest", str(source), "--name", "bad", "--workers", str(workers), expect_ok=False)
    assert result.exit_code != 0
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert catalog_snapshot(project) == before
    assert not (project.store_path / "bad").exists()


def _label(bad: Path, case: str = "demo_001") -> Path:
    return bad / "labelsTr" / f"{case}.nii.gz"


def _spacing(image):
    image.SetSpacing(tuple(s * 1.5 for s in image.GetSpacing()))
    return image


def _origin(image):
    image.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
    return image


def _direction(image):
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    return image


def _shape(image):
    return image[:, :, 1:]


@pytest.mark.parametrize(
    ("change", "message"),
    [(_shape, "label shape"), (_spacing, "spacing"), (_origin, "origin"), (_direction, "direction")],
)
def test_geometry_mismatch(stored, change, message):
    project, bad, before = stored
    _rewrite(_label(bad), change)
    _assert_rejected(project, bad, before, "demo_001.nii.gz", message)


def test_geometry_mismatch_with_parallel_workers(stored):
    project, bad, before = stored
    _rewrite(_label(bad), _spacing)
    _assert_rejected(project, bad, before, "demo_001.nii.gz", "spacing", workers=2)


def test_undeclared_label_value(stored):
    project, bad, before = stored

    def add_seven(image):
        array = sitk.GetArrayFromImage(image)
        array[0, 0, 0] = 7
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    _rewrite(_label(bad), add_seven)
    _assert_rejected(project, bad, before, "demo_001.nii.gz", "label values [7] are not declared")


def test_missing_channel(stored):
    project, bad, before = stored
    description = json.loads((bad / "dataset.json").read_text())
    description["channel_names"] = {"0": "CT", "1": "PET"}
    (bad / "dataset.json").write_text(json.dumps(description))
    for case in ("demo_000", "demo_001", "demo_002"):
        shutil.copy(bad / "imagesTr" / f"{case}_0000.nii.gz", bad / "imagesTr" / f"{case}_0001.nii.gz")
    _assert_rejected(project, bad, before, "demo_003_0001.nii.gz", "channel 1 missing")


def _convert(folder: Path, ending: str) -> None:
    """Rewrite a dataset in another file format (ITK's NIfTI reader turns NaN into 0, NRRD keeps it)."""
    for path in sorted(folder.rglob("*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path).replace(".nii.gz", ending))
        path.unlink()
    description = json.loads((folder / "dataset.json").read_text())
    description["file_ending"] = ending
    (folder / "dataset.json").write_text(json.dumps(description))


def test_nan_voxels(stored):
    project, bad, before = stored
    _convert(bad, ".nrrd")

    def with_nan(image):
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array[1, 2, 3] = np.nan
        array[1, 2, 4] = np.inf
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(image)
        return out

    _rewrite(bad / "imagesTr" / "demo_002_0000.nrrd", with_nan)
    _assert_rejected(project, bad, before, "demo_002_0000.nrrd", "2 NaN or infinite voxel(s)")


@pytest.mark.parametrize(("ending", "big_endian"), [(".nii.gz", False), (".nii", False), (".nii.gz", True)])
def test_nan_voxels_in_float_nifti(stored, ending, big_endian):
    """ITK's NIfTI reader turns NaN and infinity into 0, so they are found in the file's own bytes."""
    project, bad, before = stored
    if ending != ".nii.gz":
        _convert(bad, ending)
    path = bad / "imagesTr" / f"demo_002_0000{ending}"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[1, 2, 3] = np.nan
    array[1, 2, 4] = -np.inf
    spoiled = sitk.GetImageFromArray(array)
    spoiled.CopyInformation(image)
    sitk.WriteImage(spoiled, str(path))
    if big_endian:
        make_big_endian(path)
    stored_voxels = nifti_payload(path)
    assert np.isnan(stored_voxels).sum() == 1 and np.isinf(stored_voxels).sum() == 1
    _assert_rejected(project, bad, before, f"demo_002_0000{ending}", "2 NaN or infinite voxel(s)")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_file(stored, damage):
    project, bad, before = stored
    path = bad / "imagesTr" / "demo_003_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an image at all" * 10)
    _assert_rejected(project, bad, before, "demo_003_0000.nii.gz", "unreadable or truncated")


def test_unsafe_case_id(stored):
    project, bad, before = stored
    for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        (bad / folder / f"demo_000{suffix}.nii.gz").rename(bad / folder / f"a..b{suffix}.nii.gz")
    _assert_rejected(project, bad, before, "a..b", "not a safe name")


def test_unsafe_dataset_name(stored):
    project, bad, before = stored
    result = run_cli(project, "ingest", str(bad), "--name", "../escape", expect_ok=False)
    assert result.exit_code != 0 and "'../escape' is not a safe name" in result.output
    assert catalog_snapshot(project) == before


@pytest.mark.parametrize("key", ["channel_names", "labels", "file_ending", "numTraining"])
def test_dataset_json_missing_key(stored, key):
    project, bad, before = stored
    description = json.loads((bad / "dataset.json").read_text())
    del description[key]
    (bad / "dataset.json").write_text(json.dumps(description))
    _assert_rejected(project, bad, before, "dataset.json", f"missing required key(s) '{key}'")


def test_existing_name_with_different_content_needs_replace(stored, tmp_path):
    project, _, before = stored
    other = write_demo_dataset(tmp_path / "other", cases=2, test_cases=0, seed=5, shape=TINY_SHAPE)
    result = run_cli(project, "ingest", str(other), "--name", "good", expect_ok=False)
    assert (
        result.exit_code != 0
        and "already exists with different content" in result.output
        and "--replace" in result.output
    )
    assert catalog_snapshot(project) == before


def test_error_is_an_ingest_error_in_python(stored):
    project, bad, before = stored
    (bad / "labelsTr" / "demo_002.nii.gz").unlink()
    with pytest.raises(IngestError, match="demo_002.nii.gz: label file missing"):
        ingest_dataset(bad, name="bad", project=project, workers=1)
    assert catalog_snapshot(project) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_ingest_leaves_catalog_as_it_was(tmp_path, stored, sig):
    project, _, before = stored
    # enough cases that the signal lands mid-ingest even when this test process is starved of CPU for seconds
    big = write_demo_dataset(tmp_path / "many", cases=40, test_cases=0, seed=2, shape=(24, 48, 48))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxelbase.cli",
            "--project",
            str(project.root),
            "ingest",
            str(big),
            "--name",
            "many",
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    staged = []
    while time.monotonic() < deadline and len(staged) < 3:
        staged = list((project.store_path / "many").glob(".raw-staging-*/demo_*/label"))
        time.sleep(0.05)
    assert len(staged) >= 3, "ingest did not start writing cases"
    assert process.poll() is None, "ingest finished before it could be interrupted: the test needs more cases"
    process.send_signal(sig)
    process.wait(timeout=60)
    assert process.returncode != 0
    after = catalog_snapshot(project)
    assert after["tables"] == before["tables"]
    assert {k: v for k, v in after["files"].items() if "/many/" not in k} == before["files"]
    # The next ingest cleans up whatever a hard kill left and completes.
    result = ingest_dataset(big, name="many", project=project, workers=2)
    assert result.n_train == 40
    assert [p.name for p in (project.store_path / "many").iterdir() if p.is_dir()] == ["raw"]

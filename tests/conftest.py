"""Shared fixtures: tiny real datasets on disk, real catalogs, and snapshots to prove nothing was lost.

Also the suite's rule on skips: a test may skip only for want of a CUDA device (its reason says "CUDA"); any other
skip is listed at the end of the run and fails it, so a missing input can never pass as a green run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from click.testing import CliRunner

from voxelbase.cli import cli
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.networks import load_checkpoint
from voxelbase.project import Project

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE = (12, 24, 24)

# nnU-Net v2's output for the project's demo data, and the generator call that data comes from (see NOTE.md there)
NNUNET_DEMO = REPO / "tests" / "fixtures" / "nnunet_demo_ct"
NNUNET_DEMO_DATA = {"cases": 10, "test_cases": 2, "seed": 0, "shape": (32, 64, 64)}


# --- skips -------------------------------------------------------------------------------------------------------

_bad_skips: list[tuple[str, str]] = []


def allowed_skip(reason: str) -> bool:
    """The one accepted reason to skip: no CUDA device (or, for CPU-only checks, one that is there)."""
    return "cuda" in reason.lower()


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _note_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if not allowed_skip(reason):
            _bad_skips.append((report.nodeid, reason))


def pytest_sessionstart(session) -> None:
    _bad_skips.clear()


def pytest_collectreport(report) -> None:
    _note_skip(report)  # a module that skips itself as a whole


def pytest_runtest_logreport(report) -> None:
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _bad_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _bad_skips:
        terminalreporter.section("skips that fail the run (only a missing CUDA device may skip a test)", red=True)
        for nodeid, reason in _bad_skips:
            terminalreporter.line(f"FAILED (skipped) {nodeid}: {reason}", red=True)


# --- data ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Project:
    return Project.resolve(tmp_path / "project")


@pytest.fixture
def tiny_raw(tmp_path) -> Path:
    """Four labelled and one test case of the demo CT, 12x24x24 voxels."""
    return write_demo_dataset(tmp_path / "raw", cases=4, test_cases=1, seed=1, shape=TINY_SHAPE)


def run_cli(project: Project, *args: str, expect_ok: bool = True):
    result = CliRunner().invoke(cli, ["--project", str(project.root), *args], catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def sql_rows(project: Project, query: str) -> list[dict]:
    """Rows of `voxelbase sql QUERY --format json`, as the CLI prints them."""
    return json.loads(run_cli(project, "sql", query, "--format", "json").output)


def volume_digest(path: Path) -> str:
    """sha256 of a volume as SimpleITK reads it: dtype, shape and voxel bytes, then spacing, origin, direction."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    digest = hashlib.sha256(json.dumps([array.dtype.str, list(array.shape)]).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([image.GetSpacing(), image.GetOrigin(), image.GetDirection()]).encode())
    return digest.hexdigest()


def nnunet_demo_dataset(out: Path) -> Path:
    """The demo dataset nnU-Net's reference output in NNUNET_DEMO was made from, written again to `out`; fails
    when the generator no longer writes the same volumes (then the reference must be made again)."""
    write_demo_dataset(out, **NNUNET_DEMO_DATA)
    expected = json.loads((NNUNET_DEMO / "inputs_sha256.json").read_text())
    written = {p.relative_to(out).as_posix(): volume_digest(p) for p in sorted(out.rglob("*.nii.gz"))}
    changed = sorted(name for name in expected.keys() | written.keys() if expected.get(name) != written.get(name))
    assert not changed, (
        f"the demo generator no longer writes the volumes nnU-Net's reference was made from ({', '.join(changed)}); "
        f"make the reference again as {NNUNET_DEMO / 'NOTE.md'} says"
    )
    return out


@pytest.fixture(scope="session")
def nnunet_demo_raw(tmp_path_factory) -> Path:
    """The nnU-Net reference's demo data (10 labelled + 2 test cases, seed 0), written once per test session;
    read it, do not change it."""
    return nnunet_demo_dataset(tmp_path_factory.mktemp("nnunet_demo") / "Dataset911_Demo")


def catalog_snapshot(project: Project) -> dict:
    """Every row of every table, and a hash of every stored file: equal snapshots mean nothing changed."""
    snapshot: dict = {"tables": {}, "files": {}}
    if project.catalog_path.exists():
        con = duckdb.connect(str(project.catalog_path), read_only=True)
        try:
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
                ).fetchall()
            ]
            for table in sorted(tables):
                rows = con.execute(f"SELECT * FROM {table}").fetchall()
                snapshot["tables"][table] = sorted(json.dumps(r, default=str) for r in rows)
        finally:
            con.close()
    if project.store_path.exists():
        for path in sorted(project.store_path.rglob("*")):
            if path.is_file():
                snapshot["files"][str(path.relative_to(project.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def write_nifti(array: np.ndarray, path: Path, *, spacing=(3.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0), direction=None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(tuple(reversed(origin)))
    if direction is not None:
        image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def tiny_spec(*, name: str = "tiny", dataset: str = "demo", folds: str = "[0, 1]", source: str | None = None) -> str:
    """The spec of a tiny experiment the tests train in seconds: 3d_fullres, 1 epoch of 2 iterations, no TTA."""
    ingest = f'[ingest]\nsource = "{source}"\n' if source is not None else ""
    return (
        f'name = "{name}"\ndataset = "{dataset}"\n{ingest}[train]\nconfigurations = ["3d_fullres"]\n'
        f"folds = {folds}\nepochs = 1\niterations_per_epoch = 2\nval_iterations = 1\nnum_workers = 1\n"
        "[predict]\ntta = false\n"
    )


@pytest.fixture(scope="session")
def preprocessed_base(tmp_path_factory) -> Path:
    """A project with the demo dataset ingested, planned and preprocessed for 3d_fullres (made once)."""
    root = tmp_path_factory.mktemp("train_base")
    raw = write_demo_dataset(root / "raw", cases=6, test_cases=0, seed=3, shape=(16, 32, 32))
    project = Project.resolve(root / "project")
    run_cli(project, "ingest", str(raw), "--name", "demo")
    run_cli(project, "plan", "demo")
    run_cli(project, "preprocess", "demo", "--configuration", "3d_fullres", "--workers", "1")
    return project.root


def copy_project(base: Path, where: Path) -> Project:
    shutil.copytree(base, where / "project")
    return Project.resolve(where / "project")


def nnunet_round_trip(project: Project, experiment: str, configuration: str, inputs: Path, where: Path) -> dict:
    """Export one configuration of an experiment as an nnU-Net model folder, import it into a new project, and
    predict the same inputs (no mirroring) with both. Returns the folder's dataset.json and plans.json, both
    projects' final weights per fold (the original's, then the imported one's), and per case the fraction of voxels
    the two segmentations agree on (they must have the same geometry)."""
    folder = where / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    run_cli(project, "export", experiment, "--format", "nnunet", "-c", configuration, "--output", str(folder))
    other = Project.resolve(where / "imported")
    run_cli(other, "import-nnunet", str(folder), "--name", "back")
    folds = sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*"))
    weights = {
        fold: [
            load_checkpoint(p.run_dir(name, configuration, fold) / "checkpoint_final.pt")["network"]
            for p, name in ((project, experiment), (other, "back"))
        ]
        for fold in folds
    }
    ours, back = where / "ours", where / "back"
    run_cli(
        project,
        "predict",
        "-e",
        experiment,
        "-c",
        configuration,
        "--input",
        str(inputs),
        "--output",
        str(ours),
        "--no-tta",
    )
    run_cli(other, "predict", "-e", "back", "--input", str(inputs), "--output", str(back), "--no-tta")
    agreement = {}
    for path in sorted(ours.glob("*.nii.gz")):
        a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(back / path.name))
        assert (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (
            b.GetSize(),
            b.GetSpacing(),
            b.GetOrigin(),
            b.GetDirection(),
        ), path.name
        agreement[path.name] = float((sitk.GetArrayFromImage(a) == sitk.GetArrayFromImage(b)).mean())
    assert agreement, f"nothing predicted from {inputs}"
    return {
        "dataset": json.loads((folder / "dataset.json").read_text()),
        "plans": json.loads((folder / "plans.json").read_text()),
        "weights": weights,
        "agreement": agreement,
        "same_weights": all(
            list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a) for a, b in weights.values()
        ),
    }

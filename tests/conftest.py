"""Shared fixtures: tiny real datasets on disk, real catalogs, and snapshots to prove nothing was lost."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.ingest.demo import write_demo_dataset
from engine.project import Project

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SYNTH = SHARED / "data" / "synth.py"
REFERENCE = SHARED / "reference"
TINY_SHAPE = (12, 24, 24)


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


def synth_dataset(out: Path, *args: str) -> Path:
    """Regenerate data with the reference generator next to the repository (tests skip without it)."""
    if not SYNTH.exists():
        pytest.skip(f"reference generator not found at {SYNTH}: comparisons with nnU-Net need it")
    subprocess.run([sys.executable, str(SYNTH), str(out), *args], check=True)
    return out


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

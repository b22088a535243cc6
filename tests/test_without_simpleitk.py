"""Training, loading and validation work from the catalog and the store alone: machines without SimpleITK
(a GPU box with only torch, duckdb and zarr) can train on a project ingested elsewhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from voxelbase.catalog.queries import run_query
from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import plan_dataset
from voxelbase.preprocessing.dataset import preprocess_dataset

BLOCKED = (
    "import sys; sys.modules['SimpleITK'] = None; from voxelbase.cli import main; sys.argv[0] = 'voxelbase'; main()"
)


def test_train_and_validate_without_simpleitk(project, tmp_path):
    extra = write_demo_dataset(tmp_path / "five", cases=5, test_cases=0, seed=1, shape=(12, 24, 24))
    ingest_dataset(extra, name="five", project=project, workers=1)
    plan_dataset("five", project=project)
    preprocess_dataset("five", configuration="3d_fullres", workers=1, project=project, progress=False)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "nositk"\ndataset = "five"\n[train]\nfolds = [0]\nepochs = 1\niterations_per_epoch = 2\n'
        "val_iterations = 1\nnum_workers = 1\n[predict]\ntta = false\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED, "--project", str(project.root), "train", str(spec)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = run_query("SELECT status FROM runs", project=project).to_pylist()
    assert rows == [{"status": "finished"}]
    assert run_query("SELECT count(*) AS n FROM metrics", project=project).to_pylist()[0]["n"] > 0
    validation = project.run_dir("nositk", "3d_fullres", "0") / "validation"
    written = sorted(p.name for p in validation.iterdir())
    assert written and all(name.endswith(".segmentation.npz") for name in written)

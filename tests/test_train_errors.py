"""Bad input to `voxelbase train`: each a clear error naming the cause, and no run left `running` behind it.

Errors found before a run starts (the spec, the dataset, the plan, the fold, the device) leave `runs` as it was;
an error after it started (a corrupt checkpoint on resume) marks the run `failed` with the error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_SHAPE, run_cli
from voxelbase.catalog import transaction
from voxelbase.catalog.queries import run_query
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.project import Project

SPEC = """\
name = "bad"
dataset = "demo"

[train]
epochs = 1
iterations_per_epoch = 1
val_iterations = 1
folds = [0]
device = "cpu"
num_workers = 1
validate = false
"""


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Two project folders: the demo dataset only ingested, and ingested + planned + 3d_fullres preprocessed."""
    root = tmp_path_factory.mktemp("train_errors")
    raw = write_demo_dataset(root / "raw", cases=5, test_cases=0, seed=5, shape=TINY_SHAPE)
    ingested = Project.resolve(root / "ingested")
    run_cli(ingested, "ingest", str(raw), "--name", "demo")
    shutil.copytree(ingested.root, root / "ready")
    ready = Project.resolve(root / "ready")
    run_cli(ready, "plan", "demo")
    run_cli(ready, "preprocess", "demo", "--configuration", "3d_fullres", "--workers", "1")
    return {"ingested": ingested.root, "ready": ready.root}


def project_from(bases: dict[str, Path], kind: str, tmp_path: Path) -> Project:
    shutil.copytree(bases[kind], tmp_path / "project")
    return Project.resolve(tmp_path / "project")


@pytest.fixture
def ready(bases, tmp_path) -> Project:
    return project_from(bases, "ready", tmp_path)


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def runs(project: Project) -> list[dict]:
    return run_query("SELECT status, error FROM runs ORDER BY run_id", project=project).to_pylist()


def fails(project: Project, *args: str) -> str:
    result = run_cli(project, "train", *args, expect_ok=False)
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    return result.output


def test_unknown_key_in_the_spec_file_is_named(ready, tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("epochs = 1", "epochz = 1"))
    output = fails(ready, str(spec))
    assert "train.epochz" in output and "spec.toml" in output
    assert runs(ready) == []


def test_unknown_key_in_an_override_is_named(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--set", "train.learning_rate=0.1")
    assert "train.learning_rate" in output
    assert runs(ready) == []


def test_a_wrong_type_is_named(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path, SPEC.replace("epochs = 1", 'epochs = "ten"'))))
    assert "train.epochs" in output and "integer" in output
    output = fails(ready, str(write_spec(tmp_path)), "--set", "train.momentum=fast")
    assert "train.momentum" in output
    assert runs(ready) == []


def test_a_dataset_that_is_not_planned(bases, tmp_path):
    project = project_from(bases, "ingested", tmp_path)
    output = fails(project, str(write_spec(tmp_path)))
    assert "demo" in output and "voxelbase plan demo" in output
    assert runs(project) == []


def test_a_dataset_that_is_not_in_the_catalog(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--set", 'dataset="liver"')
    assert "'liver'" in output and "voxelbase ingest" in output


def test_a_configuration_that_is_not_preprocessed(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--configuration", "2d")
    assert "not preprocessed" in output and "voxelbase preprocess demo --configuration 2d" in output
    assert runs(ready) == []


def test_a_configuration_that_is_not_planned(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--configuration", "3d_lowres")
    assert "3d_lowres" in output
    assert runs(ready) == []


def test_a_fold_outside_the_splits(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--fold", "7")
    assert "fold '7'" in output and "0, 1, 2, 3, 4" in output
    output = fails(ready, str(write_spec(tmp_path)), "--set", "train.folds=[5]")
    assert "5" in output
    assert runs(ready) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_one(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--device", "cuda")
    assert "cuda" in output.lower() and "--device cpu" in output
    output = fails(ready, str(write_spec(tmp_path)), "--set", 'train.device="cuda:1"')
    assert "cuda:1" in output
    assert runs(ready) == []


def test_a_corrupt_checkpoint_on_resume_fails_the_run_with_its_error(ready, tmp_path):
    spec = write_spec(tmp_path)
    run_cli(ready, "train", str(spec))
    # The state a kill leaves: the run still `running`, its latest checkpoint on disk - here truncated.
    folder = ready.run_dir("bad", "3d_fullres", "0")
    data = (folder / "checkpoint_final.pt").read_bytes()
    (folder / "checkpoint_latest.pt").write_bytes(data[: len(data) // 2])
    with transaction(ready) as con:
        con.execute("UPDATE runs SET status = 'running', finished_at = NULL")

    output = fails(ready, str(spec), "--resume")
    assert "checkpoint_latest.pt" in output and "corrupt" in output
    (run,) = runs(ready)
    assert run["status"] == "failed"
    assert "checkpoint_latest.pt" in run["error"] and "corrupt" in run["error"]


def test_resume_with_nothing_to_resume(ready, tmp_path):
    output = fails(ready, str(write_spec(tmp_path)), "--resume")
    assert "nothing to resume" in output and "never ran" in output
    assert runs(ready) == []

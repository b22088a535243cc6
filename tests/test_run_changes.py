"""Each kind of spec change redoes exactly the work it makes stale, and the tables then hold only current results.

One finished experiment (2 folds) is made once; every test works on its own copy of the project, with the same
dataset folder, so the keys of the copy are the keys of the original.
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_cli, tiny_spec
from voxelbase.catalog.queries import run_query
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.project import Project

SPEC = tiny_spec(name="keys", source="{source}")
TRAIN = ["train:3d_fullres:0", "train:3d_fullres:1"]
VALIDATE = ["validate:3d_fullres:0", "validate:3d_fullres:1"]
SCORE = ["score:3d_fullres:0", "score:3d_fullres:1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    raw = write_demo_dataset(root / "raw", cases=6, test_cases=0, seed=11, shape=(12, 24, 24))
    spec = root / "spec.toml"
    spec.write_text(SPEC.format(source=raw.as_posix()))
    project = Project.resolve(root / "project")
    run_cli(project, "run", str(spec))
    return root, spec, project


@pytest.fixture
def copy(finished, tmp_path):
    _, spec, project = finished
    shutil.copytree(project.root, tmp_path / "project")
    return spec, Project.resolve(tmp_path / "project")


def _run(project: Project, spec_text: str, tmp_path, *extra: str) -> dict[str, str]:
    spec = tmp_path / "changed.toml"
    spec.write_text(spec_text)
    output = run_cli(project, "run", str(spec), *extra).output
    table = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "done"):
            table[parts[0]] = parts[1]
    return table


def _ran(outcomes: dict[str, str]) -> set[str]:
    return {name for name, outcome in outcomes.items() if outcome == "ran"}


def _rows(project: Project, sql: str) -> list[dict]:
    return run_query(sql, project=project).to_pylist()


def _training_runs(project: Project) -> list[dict]:
    return _rows(project, "SELECT run_id, fold, epochs, finished_at FROM runs WHERE kind = 'train' ORDER BY run_id")


def _mtimes(project: Project, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(project.runs_path.rglob(pattern))}


def test_a_prediction_setting_revalidates_without_retraining(copy, tmp_path):
    spec, project = copy
    runs_before, weights = _training_runs(project), _mtimes(project, "checkpoint_final.pt")
    hashes = _rows(project, "SELECT run_id, validation_hash FROM runs WHERE kind = 'train' ORDER BY run_id")
    outcomes = _run(project, spec.read_text().replace("tta = false", "tta = true"), tmp_path)
    assert _ran(outcomes) == {*VALIDATE, *SCORE, "postprocess:3d_fullres", "select"}
    assert _training_runs(project) == runs_before and _mtimes(project, "checkpoint_final.pt") == weights
    after = _rows(
        project, "SELECT run_id, validation_hash, scoring_hash FROM runs WHERE kind = 'train' ORDER BY run_id"
    )
    assert all(a["validation_hash"] != b["validation_hash"] and a["scoring_hash"] for a, b in zip(after, hashes))
    # every validation case of both folds is scored again, once, under the same (unchanged) training runs
    per_fold = _rows(
        project,
        "SELECT fold, count(DISTINCT case_id) AS n FROM fold_summary JOIN metrics USING (run_id) GROUP BY fold ORDER BY fold",
    )
    expected = _rows(
        project,
        "SELECT fold, count(*) AS n FROM splits WHERE role = 'val' AND fold IN ('0', '1') GROUP BY fold ORDER BY fold",
    )
    assert per_fold == expected


def test_an_evaluation_setting_rescores_without_predicting(copy, tmp_path):
    spec, project = copy
    segmentations = _mtimes(project, "validation/*.nii.gz")
    text = spec.read_text() + "[evaluate]\nnsd_tolerance_mm = 2.5\n"
    assert _ran(_run(project, text, tmp_path)) == {*SCORE, "select"}
    assert _mtimes(project, "validation/*.nii.gz") == segmentations and segmentations
    tolerances = _rows(project, "SELECT DISTINCT nsd_tolerance_mm AS t FROM metrics")
    assert tolerances == [{"t": 2.5}]
    assert _ran(_run(project, text, tmp_path)) == set()  # and then it is up to date


def test_a_training_setting_retrains_and_only_the_new_runs_count(copy, tmp_path):
    spec, project = copy
    old = {row["run_id"] for row in _training_runs(project)}
    text = spec.read_text().replace("num_workers = 1", "num_workers = 1\ninitial_lr = 0.005")
    outcomes = _run(project, text, tmp_path)
    assert _ran(outcomes) == {*TRAIN, *VALIDATE, *SCORE, "postprocess:3d_fullres", "select"}
    current = {row["run_id"] for row in _rows(project, "SELECT run_id FROM result_runs WHERE kind = 'train'")}
    assert len(current) == 2 and not current & old
    summarized = {row["run_id"] for row in _rows(project, "SELECT DISTINCT run_id FROM fold_summary")}
    assert summarized == current  # the superseded runs' metrics are not what the views show


def test_where_a_step_runs_and_how_the_source_is_written_change_nothing(finished, copy, tmp_path):
    root, spec, project = copy[0].parent, *copy
    elsewhere = tmp_path / "specs"
    elsewhere.mkdir()
    relative = "../" * len(elsewhere.relative_to(elsewhere.anchor).parts) + root.joinpath("raw").as_posix().lstrip("/")
    text = spec.read_text().replace(f'source = "{root.joinpath("raw").as_posix()}"', f'source = "{relative}"')
    text = text.replace("num_workers = 1", 'num_workers = 2\ndevice = "cpu"') + "[preprocess]\nworkers = 1\n"
    moved = elsewhere / "spec.toml"
    moved.write_text(text)
    output = run_cli(project, "run", str(moved)).output
    assert "nothing to do" in output, output


def test_train_command_revalidates_a_trained_fold_without_retraining(copy):
    spec, project = copy
    runs_before = _training_runs(project)
    run_cli(project, "train", str(spec), "--fold", "0", "--set", "predict.tta=true")
    assert _training_runs(project) == runs_before
    rows = _rows(project, "SELECT validation_hash FROM runs WHERE kind = 'train' ORDER BY run_id")
    assert rows[0]["validation_hash"] != rows[1]["validation_hash"]  # fold 0 re-validated, fold 1 untouched

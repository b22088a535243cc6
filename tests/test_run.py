"""The declarative `run`: the whole experiment from one spec, doing only the steps whose key changed."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_cli, tiny_spec
from voxelbase.catalog.queries import run_query
from voxelbase.ingest.demo import write_demo_dataset

SPEC = tiny_spec(source="raw")


@pytest.fixture
def experiment(tmp_path):
    write_demo_dataset(tmp_path / "raw", cases=6, test_cases=1, seed=4, shape=(12, 24, 24))
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    return spec


def _outcomes(output: str) -> dict[str, str]:
    table = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "done", "would"):
            table[parts[0]] = parts[1]
    return table


def test_run_twice_then_extend_epochs(experiment, project):
    first = run_cli(project, "run", str(experiment)).output
    steps = [
        "ingest",
        "plan",
        "preprocess:3d_fullres",
        "train:3d_fullres:0",
        "validate:3d_fullres:0",
        "score:3d_fullres:0",
        "train:3d_fullres:1",
        "validate:3d_fullres:1",
        "score:3d_fullres:1",
        "postprocess:3d_fullres",
        "select",
    ]
    assert _outcomes(first) == dict.fromkeys(steps, "ran")
    assert run_query("SELECT count(*) AS n FROM runs WHERE status = 'finished'", project=project).to_pylist() == [
        {"n": 2}
    ]
    assert run_query("SELECT choice FROM selections", project=project).to_pylist() == [{"choice": "3d_fullres"}]

    second = run_cli(project, "run", str(experiment)).output
    assert set(_outcomes(second).values()) == {"done"} and "nothing to do" in second

    experiment.write_text(SPEC.replace("epochs = 1", "epochs = 2"))
    dry = run_cli(project, "run", str(experiment), "--dry-run").output
    assert _outcomes(dry)["train:3d_fullres:0"] == "would" and "spec settings changed" in dry
    third = run_cli(project, "run", str(experiment)).output
    outcomes = _outcomes(third)
    assert [s for s in steps if outcomes[s] == "ran"] == steps[3:]
    assert [s for s in steps if outcomes[s] == "done"] == steps[:3]
    # training continued the finished runs (same run ids) up to the new epoch count
    rows = run_query("SELECT run_id, epochs, status FROM runs ORDER BY run_id", project=project).to_pylist()
    assert rows == [{"run_id": 1, "epochs": 2, "status": "finished"}, {"run_id": 2, "epochs": 2, "status": "finished"}]
    assert run_query("SELECT count(*) AS n FROM epochs", project=project).to_pylist() == [{"n": 4}]


def test_new_case_in_source_reruns_from_ingest(experiment, project):
    run_cli(project, "run", str(experiment), "--set", "train.folds=[0]")
    raw = experiment.parent / "raw"
    extra = write_demo_dataset(experiment.parent / "extra", cases=1, test_cases=0, seed=9, shape=(12, 24, 24))
    shutil.copy(extra / "imagesTr" / "demo_000_0000.nii.gz", raw / "imagesTr" / "demo_100_0000.nii.gz")
    shutil.copy(extra / "labelsTr" / "demo_000.nii.gz", raw / "labelsTr" / "demo_100.nii.gz")
    description = (raw / "dataset.json").read_text().replace('"numTraining": 6', '"numTraining": 7')
    (raw / "dataset.json").write_text(description)
    dry = run_cli(project, "run", str(experiment), "--set", "train.folds=[0]", "--dry-run").output
    assert "inputs changed" in dry and _outcomes(dry)["ingest"] == "would"
    run_cli(project, "run", str(experiment), "--set", "train.folds=[0]")
    n = run_query("SELECT count(*) AS n FROM cases WHERE split = 'train'", project=project).to_pylist()
    assert n == [{"n": 7}]


def test_run_with_a_bad_spec_names_the_key(experiment, project):
    experiment.write_text(SPEC.replace("epochs = 1", "epoch = 1"))
    result = run_cli(project, "run", str(experiment), expect_ok=False)
    assert result.exit_code == 1 and "train.epoch" in result.output


def test_two_configurations_are_ensembled_postprocessed_and_selected(experiment, project):
    spec = SPEC.replace('configurations = ["3d_fullres"]', 'configurations = ["3d_fullres", "2d"]')
    spec = spec.replace("folds = [0, 1]", "folds = [0]\nsave_probabilities = true")
    experiment.write_text(spec)
    output = run_cli(project, "run", str(experiment)).output
    assert _outcomes(output)["ensemble:2d+3d_fullres"] == "ran"
    decided = run_query("SELECT configuration FROM postprocessing ORDER BY configuration", project=project)
    assert decided.column("configuration").to_pylist() == ["2d", "3d_fullres", "ensemble:2d+3d_fullres"]
    ranking = run_query("SELECT choice FROM selections", project=project).to_pylist()
    assert ranking and ranking[0]["choice"] in ("2d", "3d_fullres", "ensemble:2d+3d_fullres")
    assert "nothing to do" in run_cli(project, "run", str(experiment)).output

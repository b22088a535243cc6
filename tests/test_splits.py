"""Fold 'all' on any number of cases, and the user's own splits (`voxelbase splits --folds N / --import FILE`)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import catalog_snapshot, run_cli, tiny_spec
from voxelbase.catalog import connect, transaction
from voxelbase.catalog.plans import splits_fingerprint, write_splits
from voxelbase.catalog.queries import run_query
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import default_splits, load_splits
from voxelbase.project import Project
from voxelbase.spec import load_spec
from voxelbase.workflow.keys import data_fingerprint

TINY = (12, 24, 24)
SPEC = tiny_spec(name="{name}", dataset="{dataset}", folds="{folds}")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two labelled cases (demo_000, demo_001) and one test case (demo_002), ingested, planned, preprocessed:
    too few for nnU-Net's default folds, so planning wrote no splits."""
    root = tmp_path_factory.mktemp("two")
    project = Project.resolve(root / "project")
    write_demo_dataset(root / "raw", cases=2, test_cases=1, seed=3, shape=TINY)
    run_cli(project, "ingest", str(root / "raw"), "--name", "two", "--workers", "1")
    run_cli(project, "plan", "two")
    run_cli(project, "preprocess", "two", "-c", "3d_fullres", "--workers", "1")
    return project


def _spec(project: Project, folds: str, name: str = "two-exp", dataset: str = "two"):
    path = project.root.parent / f"{name}.toml"
    path.write_text(SPEC.format(name=name, dataset=dataset, folds=folds))
    return path


def _clear_splits(project: Project) -> None:
    with transaction(project) as con:
        write_splits(con, "two", [])


def _split_rows(project: Project) -> list[tuple]:
    table = run_query("SELECT fold, role, case_id FROM splits WHERE dataset = 'two' ORDER BY ALL", project=project)
    return [tuple(row.values()) for row in table.to_pylist()]


def test_fold_all_trains_and_validates_without_splits(two):
    _clear_splits(two)
    run_cli(two, "train", str(_spec(two, '["all"]')))
    runs = run_query("SELECT run_id, fold, status FROM runs WHERE experiment = 'two-exp'", project=two).to_pylist()
    assert [(r["fold"], r["status"]) for r in runs] == [("all", "finished")]
    scored = run_query(
        "SELECT DISTINCT case_id FROM metrics WHERE run_id = ? ORDER BY case_id",
        project=two,
        params=[runs[0]["run_id"]],
    )
    assert scored.column("case_id").to_pylist() == ["demo_000", "demo_001"]  # every labelled case, no test case
    assert _split_rows(two) == []
    # its step input is the labelled cases, not the splits (which it does not read)
    spec = load_spec(_spec(two, '["all"]'))
    assert data_fingerprint(two, spec, "nnunet-8gb", ("splits", "all")) == "demo_000,demo_001"
    with connect(two, read_only=True) as con, pytest.raises(ValueError, match="fold 'all' has no split"):
        splits_fingerprint(con, "two", "all")


def test_numbered_fold_needs_splits_then_trains_on_made_folds(two):
    _clear_splits(two)
    spec = _spec(two, "[0]", name="two-folds")
    refused = run_cli(two, "train", str(spec), expect_ok=False)
    assert refused.exit_code == 1
    for hint in ("fold '0'", "2 labelled case(s)", "voxelbase splits two --folds N", "--import", "fold 'all'"):
        assert hint in refused.output
    made = run_cli(two, "splits", "two", "--folds", "2").output
    assert "changed fold(s): 0, 1" in made and "demo_001" in made
    assert _split_rows(two) == [
        ("0", "train", "demo_000"),
        ("0", "val", "demo_001"),
        ("1", "train", "demo_001"),
        ("1", "val", "demo_000"),
    ]  # sklearn's KFold(2, shuffle=True, random_state=12345) over the sorted ids
    run_cli(two, "train", str(spec))
    runs = run_query("SELECT fold, status FROM runs WHERE experiment = 'two-folds'", project=two).to_pylist()
    assert runs == [{"fold": "0", "status": "finished"}]
    assert "2 folds over 2 labelled cases" in run_cli(two, "splits", "two").output


def test_default_splits_follow_kfold_for_any_number_of_folds():
    ids = [f"demo_{i:03d}" for i in range(7)][::-1]
    folds = default_splits(ids, n_folds=3)  # expected values computed with scikit-learn's KFold
    assert [f["val"] for f in folds] == [
        ["demo_003", "demo_004", "demo_006"],
        ["demo_000", "demo_001"],
        ["demo_002", "demo_005"],
    ]
    assert all(sorted(f["train"] + f["val"]) == sorted(ids) for f in folds)
    with pytest.raises(ValueError, match="at least 2 folds"):
        default_splits(ids, n_folds=1)
    with pytest.raises(ValueError, match="at least 8 cases"):
        default_splits(ids, n_folds=8)


def test_import_writes_exactly_the_file_and_exports_it_back(two, tmp_path):
    wanted = [{"train": ["demo_000"], "val": ["demo_001"]}]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(wanted))
    output = run_cli(two, "splits", "two", "--import", str(path)).output
    assert _split_rows(two) == [("0", "train", "demo_000"), ("0", "val", "demo_001")]
    # nnU-Net does not require every case to be validated somewhere: a note, not an error
    assert "note: 1 labelled case(s) are in no validation list" in output and "demo_000" in output
    assert load_splits(two, "two") == {"0": wanted[0]}
    again = run_cli(two, "splits", "two", "--import", str(path), "--export", str(tmp_path / "out.json")).output
    assert "splits unchanged" in again
    assert json.loads((tmp_path / "out.json").read_text()) == wanted


GOOD = [{"train": ["demo_000"], "val": ["demo_001"]}, {"train": ["demo_001"], "val": ["demo_000"]}]
BAD_FILES = {
    "unknown case": (
        [{"train": ["demo_000"], "val": ["demo_009"]}],
        ["fold 0: case 'demo_009' in 'val' is not a case of dataset 'two'"],
    ),
    "in both lists": (
        [GOOD[0], {"train": ["demo_000", "demo_001"], "val": ["demo_001"]}],
        ["fold 1: case 'demo_001' is in both 'train' and 'val'"],
    ),
    "no validation cases": ([{"train": ["demo_000"], "val": []}], ["fold 0 has no validation cases"]),
    "no training cases": ([GOOD[0], {"train": [], "val": ["demo_000"]}], ["fold 1 has no training cases"]),
    "test case": (
        [{"train": ["demo_000", "demo_002"], "val": ["demo_001"]}],
        ["fold 0: case 'demo_002' in 'train' is a test case of dataset 'two', without a label"],
    ),
    "duplicate": (
        [{"train": ["demo_000", "demo_000"], "val": ["demo_001"]}],
        ["fold 0: case 'demo_000' is listed twice in 'train'"],
    ),
    "not a list": ({"train": ["demo_000"], "val": ["demo_001"]}, ["must be a JSON list of folds, got an object"]),
    "empty list": ([], ["holds no folds"]),
    "fold not an object": ([["demo_000"]], ["fold 0 must be an object with 'train' and 'val' lists, got a list"]),
    "extra key": (
        [{"train": ["demo_000"], "val": ["demo_001"], "test": []}],
        ["fold 0 has key(s) 'test' besides 'train' and 'val'"],
    ),
    "missing key": ([{"train": ["demo_000"]}], ["fold 0 has no 'val' list"]),
    "ids not strings": (
        [{"train": [0], "val": "demo_001"}],
        ["'train' entry 0 is not a case id string: 0", "'val' must be a list"],
    ),
    "not json": ("[{'train': []}]", ["not valid JSON", "line 1 column 3"]),
}


@pytest.mark.parametrize("problem", sorted(BAD_FILES))
def test_bad_file_is_refused_and_the_old_splits_kept(two, tmp_path, problem):
    run_cli(two, "splits", "two", "--folds", "2")
    content, messages = BAD_FILES[problem]
    path = tmp_path / "splits_final.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = catalog_snapshot(two)["tables"]
    result = run_cli(two, "splits", "two", "--import", str(path), expect_ok=False)
    assert result.exit_code == 1
    assert str(path) in result.output
    for message in messages:
        assert message in result.output
    assert catalog_snapshot(two)["tables"] == before
    assert load_splits(two, "two") == {"0": GOOD[0], "1": GOOD[1]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["two", "--folds", "1"], "cross-validation needs at least 2 folds"),
        (["two", "--folds", "3"], "cannot make 3 folds of dataset 'two' from its 2 labelled case(s)"),
        (["nope", "--folds", "2"], "dataset 'nope' does not exist"),
        (["nope"], "dataset 'nope' does not exist"),
        (["two", "--folds", "2", "--import", "x.json"], "give --folds or --import, not both"),
    ],
)
def test_bad_options_are_refused_and_the_old_splits_kept(two, args, message):
    run_cli(two, "splits", "two", "--folds", "2")
    before = catalog_snapshot(two)["tables"]
    result = run_cli(two, "splits", *args, expect_ok=False)
    assert result.exit_code != 0 and message in result.output
    assert catalog_snapshot(two)["tables"] == before


def _outcomes(output: str) -> dict[str, tuple[str, str]]:
    found = {}
    for line in output.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[1] in ("ran", "done", "would"):
            found[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return found


def _training_run_ids(project: Project) -> dict[str, int]:
    rows = run_query("SELECT fold, run_id FROM result_runs WHERE kind = 'train'", project=project).to_pylist()
    return {row["fold"]: row["run_id"] for row in rows}


def test_run_retrains_only_the_fold_whose_split_changed(tmp_path):
    project = Project.resolve(tmp_path / "project")
    write_demo_dataset(tmp_path / "raw", cases=6, test_cases=1, seed=4, shape=TINY)
    spec = tmp_path / "spec.toml"
    # training steps are what this is about: validation would only add time
    text = SPEC.format(name="tiny", dataset="demo", folds="[0, 1]").replace(
        "num_workers = 1", "num_workers = 1\nvalidate = false"
    )
    spec.write_text(text + '[ingest]\nsource = "raw"\n')
    run_cli(project, "run", str(spec))
    folds = load_splits(project, "demo")
    assert len(folds) == 5  # planning wrote nnU-Net's default folds (6 cases)
    moved = folds["0"]["train"][0]
    changed = [
        {"train": [c for c in s["train"] if c != moved], "val": s["val"] + [moved]} if k == "0" else s
        for k, s in folds.items()
    ]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(changed))
    assert "changed fold(s): 0\n" in run_cli(project, "splits", "demo", "--import", str(path)).output
    dry = _outcomes(run_cli(project, "run", str(spec), "--dry-run").output)
    assert dry["train:3d_fullres:0"][0] == "would" and "inputs changed" in dry["train:3d_fullres:0"][1]
    assert dry["train:3d_fullres:1"][0] == "done"
    assert dry["preprocess:3d_fullres"][0] == "done"
    before = _training_run_ids(project)
    run_cli(project, "run", str(spec))
    after = _training_run_ids(project)
    assert after["1"] == before["1"] and after["0"] != before["0"]  # fold 0 retrained on its new split, fold 1 kept

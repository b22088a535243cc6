"""Training from a spec on real tiny data: what a run records, kill-and-resume, extend, no-op reruns, a `sql`
while training, and that the loop learns.

One session fixture ingests, plans and preprocesses a 6-case demo dataset (16x32x32 voxels, patch 16x32x32 from
the plan); each test trains in its own copy, 1-8 epochs of 2-5 iterations, on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, copy_project, run_cli
from voxelbase.catalog.queries import run_query
from voxelbase.planning import load_plan
from voxelbase.project import Project

SPEC = """\
name = "tiny"
dataset = "demo"

[train]
epochs = 1
iterations_per_epoch = 2
val_iterations = 1
folds = [0]
checkpoint_every = 1
device = "cpu"
num_workers = 1

[predict]
tta = false
"""


@pytest.fixture
def project(preprocessed_base, tmp_path) -> Project:
    return copy_project(preprocessed_base, tmp_path)


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC)
    return path


def query(project: Project, sql: str, *params) -> list[dict]:
    return run_query(sql, project=project, params=list(params)).to_pylist()


def train(project: Project, spec: Path, *sets: str, flags: tuple[str, ...] = (), expect_ok: bool = True):
    args = ["train", str(spec), *flags]
    for item in sets:
        args += ["--set", item]
    return run_cli(project, *args, expect_ok=expect_ok)


def train_subprocess(project: Project, spec: Path, *sets: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "voxelbase.cli", "--project", str(project.root), "train", str(spec)]
    for item in sets:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_dir(project: Project) -> Path:
    return project.run_dir("tiny", "3d_fullres", "0")


def final_weights(project: Project) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(project) / "checkpoint_final.pt", weights_only=True)["network"]


@pytest.fixture(scope="module")
def finished(preprocessed_base, tmp_path_factory) -> Project:
    """One finished 2-epoch run, with validation, trained from a 1-epoch spec raised by `--set`."""
    where = tmp_path_factory.mktemp("finished")
    project = copy_project(preprocessed_base, where)
    spec = where / "tiny.toml"
    spec.write_text(SPEC)
    train(project, spec, "train.epochs=2", "train.iterations_per_epoch=3", "train.val_iterations=2")
    return project


def spec_of(project: Project) -> Path:
    """The spec file the `finished` run was trained from (next to its project folder)."""
    return project.root.parent / "tiny.toml"


def test_a_run_fills_experiments_runs_epochs_metrics_and_leaves_checkpoints(finished):
    project = finished
    experiment = query(project, "SELECT dataset, spec FROM experiments WHERE name = 'tiny'")
    assert len(experiment) == 1 and experiment[0]["dataset"] == "demo"
    stored = json.loads(experiment[0]["spec"])
    assert stored["train"]["epochs"] == 2 and stored["train"]["iterations_per_epoch"] == 3  # the overrides
    assert stored["train"]["initial_lr"] == 0.01  # defaults resolved into the stored spec

    runs = query(project, "SELECT run_id, status, epochs, error, fold, configuration FROM runs")
    assert [(r["status"], r["epochs"], r["fold"], r["configuration"]) for r in runs] == [
        ("finished", 2, "0", "3d_fullres")
    ]
    assert runs[0]["error"] is None
    run_id = runs[0]["run_id"]

    plan = load_plan(project, "demo", configuration="3d_fullres")
    foreground = plan.num_classes - 1
    epochs = query(project, "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", run_id)
    assert [e["epoch"] for e in epochs] == [0, 1]
    for row in epochs:
        assert len(row["val_dice"]) == foreground
        assert row["train_loss"] is not None and row["val_loss"] is not None and row["seconds"] > 0
    assert epochs[0]["lr"] == pytest.approx(0.01) and epochs[1]["lr"] < epochs[0]["lr"]  # poly decay

    val_cases = {r["case_id"] for r in query(project, "SELECT case_id FROM splits WHERE fold = 0 AND role = 'val'")}
    metrics = query(project, "SELECT case_id, label, tp, fp, fn, n_ref FROM metrics WHERE run_id = ?", run_id)
    assert sorted((m["case_id"], m["label"]) for m in metrics) == sorted(
        (c, label) for c in val_cases for label in range(1, foreground + 1)
    )
    for m in metrics:
        assert m["tp"] + m["fn"] == m["n_ref"]

    folder = run_dir(project)
    for name in ("checkpoint_final.pt", "checkpoint_best.pt", "progress.png"):
        assert (folder / name).stat().st_size > 0, name
    assert not (folder / "checkpoint_latest.pt").exists()  # a finished run continues from final
    assert len(list((folder / "validation").glob("*.nii.gz"))) == len(val_cases)


def test_checkpoints_load_without_code_and_hold_spec_and_plan(finished):
    plan = load_plan(finished, "demo", configuration="3d_fullres")
    for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
        payload = torch.load(run_dir(finished) / name, weights_only=True)
        assert json.loads(payload["spec_json"])["train"]["epochs"] == 2
        assert json.loads(payload["plan_json"]) == plan.to_dict()
        assert all(isinstance(v, torch.Tensor) for v in payload["network"].values())
    assert torch.load(run_dir(finished) / "checkpoint_final.pt", weights_only=True)["epoch"] == 1


def test_a_second_identical_train_is_a_no_op(finished):
    before = query(finished, "SELECT * FROM runs"), query(finished, "SELECT * FROM epochs")
    mtime = (run_dir(finished) / "checkpoint_final.pt").stat().st_mtime_ns
    result = train(
        finished, spec_of(finished), "train.epochs=2", "train.iterations_per_epoch=3", "train.val_iterations=2"
    )
    assert "already trained" in result.output
    assert (query(finished, "SELECT * FROM runs"), query(finished, "SELECT * FROM epochs")) == before
    assert (run_dir(finished) / "checkpoint_final.pt").stat().st_mtime_ns == mtime


def test_raising_epochs_extends_the_run_and_lowering_them_starts_a_new_one(finished, tmp_path):
    project = copy_project(finished.root, tmp_path)
    spec = spec_of(finished)
    common = ("train.iterations_per_epoch=3", "train.val_iterations=2")
    (first,) = query(project, "SELECT run_id FROM runs")
    before = query(project, "SELECT * FROM epochs WHERE epoch < 2 ORDER BY epoch")

    train(project, spec, "train.epochs=4", *common)
    runs = query(project, "SELECT run_id, status, epochs FROM runs")
    assert runs == [{"run_id": first["run_id"], "status": "finished", "epochs": 4}]
    epochs = query(project, "SELECT * FROM epochs ORDER BY epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[:2] == before  # the first two epochs were continued, not redone
    assert epochs[2]["lr"] == pytest.approx(0.01 * (1 - 2 / 4) ** 0.9)  # the schedule of the longer run
    assert torch.load(run_dir(project) / "checkpoint_final.pt", weights_only=True)["epoch"] == 3
    n_metrics = query(project, "SELECT count(*) AS n FROM metrics")[0]["n"]
    assert n_metrics == len(query(project, "SELECT * FROM metrics WHERE run_id = ?", first["run_id"]))

    train(project, spec, "train.epochs=3", *common)
    runs = query(project, "SELECT run_id, status, epochs FROM runs ORDER BY run_id")
    assert [(r["status"], r["epochs"]) for r in runs] == [("finished", 4), ("finished", 3)]
    second = runs[1]["run_id"]
    assert second != first["run_id"]
    assert [e["epoch"] for e in query(project, "SELECT epoch FROM epochs WHERE run_id = ? ORDER BY 1", second)] == [
        0,
        1,
        2,
    ]
    assert len(query(project, "SELECT * FROM epochs WHERE run_id = ?", first["run_id"])) == 4  # history kept


def wait_for(path: Path, process: subprocess.Popen, *, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before {path.name} appeared:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.02)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(project, spec, preprocessed_base, tmp_path):
    sets = ("train.epochs=4", "train.iterations_per_epoch=2", "train.validate=false")
    process = train_subprocess(project, spec, *sets)
    wait_for(run_dir(project) / "checkpoint_latest.pt", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(run_dir(project) / "checkpoint_latest.pt", weights_only=True)["epoch"]
    assert killed_at < 3 and not (run_dir(project) / "checkpoint_final.pt").exists()
    assert [r["status"] for r in query(project, "SELECT status FROM runs")] == ["running"]  # killed: no last words

    kept = query(project, "SELECT * FROM epochs WHERE epoch <= ? ORDER BY epoch", killed_at)
    train(project, spec, *sets, flags=("--resume",))
    assert query(project, "SELECT * FROM epochs WHERE epoch <= ? ORDER BY epoch", killed_at) == kept  # not redone
    runs = query(project, "SELECT run_id, status FROM runs")
    assert [r["status"] for r in runs] == ["finished"]
    epochs = query(project, "SELECT epoch, lr FROM epochs WHERE run_id = ? ORDER BY epoch", runs[0]["run_id"])
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]

    (tmp_path / "again").mkdir()
    uninterrupted = copy_project(preprocessed_base, tmp_path / "again")
    train(uninterrupted, spec, *sets)
    resumed, straight = final_weights(project), final_weights(uninterrupted)
    assert resumed.keys() == straight.keys()
    for key in straight:  # bit-exact: batches are a pure function of (seed, index), the optimizer state is restored
        assert torch.equal(resumed[key], straight[key]), key
    assert query(project, "SELECT train_loss FROM epochs ORDER BY epoch") == query(
        uninterrupted, "SELECT train_loss FROM epochs ORDER BY epoch"
    )


def test_sql_works_while_train_runs_and_sigterm_leaves_the_run_interrupted(project, spec):
    sets = ("train.epochs=4", "train.iterations_per_epoch=2", "train.validate=false")
    process = train_subprocess(project, spec, *sets)
    latest = run_dir(project) / "checkpoint_latest.pt"
    counts = []  # epochs rows seen by `sql` while the trainer was alive
    try:
        while process.poll() is None:
            result = run_cli(project, "sql", "select count(*) AS n from epochs", "--format", "json")
            counts.append(json.loads(result.output)[0]["n"])
            if latest.exists() and counts[-1] >= 1 and len(counts) >= 2:
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.1)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] >= 1, counts
    assert process.returncode not in (0, None), output
    (run,) = query(project, "SELECT status, error FROM runs")
    assert run["status"] == "interrupted", (run, output)

    train(project, spec, *sets, flags=("--resume",))
    assert query(project, "SELECT status FROM runs") == [{"status": "finished"}]
    assert [e["epoch"] for e in query(project, "SELECT epoch FROM epochs ORDER BY epoch")] == [0, 1, 2, 3]


def test_the_loop_learns(project, spec):
    """Over 40 iterations on the demo data the loss falls and the pseudo Dice of the organ label rises."""
    train(
        project,
        spec,
        "train.epochs=8",
        "train.iterations_per_epoch=5",
        "train.val_iterations=2",
        "train.validate=false",
    )
    epochs = query(project, "SELECT epoch, train_loss, val_loss, val_dice FROM epochs ORDER BY epoch")
    assert len(epochs) == 8
    first, last = epochs[0], epochs[-1]
    assert last["train_loss"] < first["train_loss"] - 1.0
    assert last["val_loss"] < first["val_loss"] - 1.0
    organ = [e["val_dice"][0] for e in epochs]
    assert max(organ[-2:]) > organ[0] + 0.2, organ

"""A training run records its process: a dead owner means interrupted, a live one keeps the fold busy."""

from __future__ import annotations

import subprocess
import sys

from voxelbase.catalog import transaction
from voxelbase.catalog.queries import run_query
from voxelbase.training import records


def _start(project) -> int:
    return records.start_run(
        project,
        experiment="e",
        configuration="3d_fullres",
        fold="0",
        plan="p",
        spec_hash="h",
        epochs=1,
        device="cpu",
        run_dir="r",
    )


def _set_pid(project, run_id: int, pid: int) -> None:
    with transaction(project) as con:
        con.execute("UPDATE runs SET pid = ? WHERE run_id = ?", [pid, run_id])


def test_a_run_whose_process_died_is_marked_interrupted(project):
    run_id = _start(project)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _set_pid(project, run_id, dead.pid)
    run = records.latest_run(project, experiment="e", configuration="3d_fullres", fold="0")
    assert run.status == "interrupted"
    row = run_query("SELECT status, error FROM runs WHERE run_id = ?", project=project, params=[run_id]).to_pylist()[0]
    assert row["status"] == "interrupted" and f"pid {dead.pid}" in row["error"]


def test_a_run_whose_process_lives_stays_running(project):
    run_id = _start(project)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _set_pid(project, run_id, alive.pid)
        run = records.latest_run(project, experiment="e", configuration="3d_fullres", fold="0")
        assert run.status == "running" and run.pid == alive.pid
    finally:
        alive.kill()
        alive.wait()

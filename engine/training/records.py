"""Training's writes to the catalog: experiments, runs and per-epoch rows, each in a short transaction.

Short transactions keep the catalog free for other processes (a `voxelbase sql` while training runs). The SQL is
in `voxelbase.catalog.runs`; what is decided here is when a 'running' run counts as dead.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from voxelbase.catalog import runs, transaction
from voxelbase.project import Project

TrainingRun = runs.TrainingRun


def record_experiment(project: Project, *, name: str, dataset: str, spec: dict, spec_hash: str) -> None:
    with transaction(project) as con:
        runs.record_experiment(con, name=name, dataset=dataset, spec=spec, spec_hash=spec_hash)


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether a run's owning process is still training: never this process itself (it trains one fold at a
    time), and a run from another host is assumed alive."""
    if pid is None or host != socket.gethostname():
        return pid is not None
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_run(project: Project, *, experiment: str, configuration: str, fold: str) -> TrainingRun | None:
    """The fold's newest training run; a 'running' one whose process has died is recorded as interrupted."""
    with transaction(project) as con:
        run = runs.latest_training_run(con, experiment=experiment, configuration=configuration, fold=fold)
        if run is not None and run.status == "running" and not _alive(run.pid, run.host):
            error = f"its process (pid {run.pid}) ended without recording an outcome"
            runs.finish_run(con, run.run_id, status="interrupted", error=error)
            run = dataclasses.replace(run, status="interrupted")
    return run


def start_run(project: Project, **values) -> int:
    """A new 'running' run (keywords of `voxelbase.catalog.runs.start_training_run`); returns its id."""
    with transaction(project) as con:
        return runs.start_training_run(con, **values)


def reopen_run(project: Project, run_id: int, *, epochs: int, spec_hash: str, device: str, world_size: int = 1) -> None:
    with transaction(project) as con:
        runs.reopen_run(con, run_id, epochs=epochs, spec_hash=spec_hash, device=device, world_size=world_size)


def finish_run(project: Project, run_id: int, *, status: str, error: str | None = None) -> None:
    with transaction(project) as con:
        runs.finish_run(con, run_id, status=status, error=error)


def record_epoch(project: Project, run_id: int, row: dict) -> None:
    with transaction(project) as con:
        runs.record_epoch(con, run_id, row)


def forget_epochs_after(project: Project, run_id: int, epoch: int) -> None:
    with transaction(project) as con:
        runs.forget_epochs_after(con, run_id, epoch)

"""Training's writes to the catalog: experiments, runs and per-epoch rows, each in a short transaction.

Short transactions keep the catalog free for other processes (a `voxelbase sql` while training runs).
"""

from __future__ import annotations

import json
import os
import socket

from engine.catalog import connect, transaction
from engine.project import Project


def record_experiment(project: Project, *, name: str, dataset: str, spec: dict, spec_hash: str) -> None:
    with transaction(project) as con:
        con.execute(
            "INSERT INTO experiments (name, dataset, spec, spec_hash) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET dataset = excluded.dataset, spec = excluded.spec, spec_hash = excluded.spec_hash",
            [name, dataset, json.dumps(spec), spec_hash],
        )


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


def latest_run(project: Project, *, experiment: str, configuration: str, fold: str) -> dict | None:
    """The fold's newest training run; a 'running' one whose process has died is recorded as interrupted."""
    with connect(project) as con:
        row = con.execute(
            "SELECT run_id, status, epochs, spec_hash, run_dir, pid, host FROM runs WHERE experiment = ? "
            "AND configuration = ? AND fold = ? AND kind = 'train' ORDER BY run_id DESC LIMIT 1",
            [experiment, configuration, fold],
        ).fetchone()
    if row is None:
        return None
    run = dict(zip(("run_id", "status", "epochs", "spec_hash", "run_dir", "pid", "host"), row))
    if run["status"] == "running" and not _alive(run["pid"], run["host"]):
        finish_run(
            project,
            run["run_id"],
            status="interrupted",
            error=f"its process (pid {run['pid']}) ended without recording an outcome",
        )
        run["status"] = "interrupted"
    return run


def start_run(
    project: Project,
    *,
    experiment: str,
    configuration: str,
    fold: str,
    plan: str,
    spec_hash: str,
    epochs: int,
    device: str,
    run_dir: str,
) -> int:
    with transaction(project) as con:
        return con.execute(
            "INSERT INTO runs (experiment, configuration, fold, kind, status, plan, spec_hash, epochs, device, run_dir, pid, host) "
            "VALUES (?, ?, ?, 'train', 'running', ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
            [
                experiment,
                configuration,
                fold,
                plan,
                spec_hash,
                epochs,
                device,
                run_dir,
                os.getpid(),
                socket.gethostname(),
            ],
        ).fetchone()[0]


def reopen_run(project: Project, run_id: int, *, epochs: int, spec_hash: str, device: str) -> None:
    with transaction(project) as con:
        con.execute(
            "UPDATE runs SET status = 'running', epochs = ?, spec_hash = ?, device = ?, error = NULL, finished_at = NULL, "
            "pid = ?, host = ? WHERE run_id = ?",
            [epochs, spec_hash, device, os.getpid(), socket.gethostname(), run_id],
        )


def finish_run(project: Project, run_id: int, *, status: str, error: str | None = None) -> None:
    with transaction(project) as con:
        con.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = current_timestamp WHERE run_id = ?",
            [status, error, run_id],
        )


def record_epoch(project: Project, run_id: int, row: dict) -> None:
    with transaction(project) as con:
        con.execute(
            "INSERT OR REPLACE INTO epochs (run_id, epoch, train_loss, val_loss, val_dice, lr, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [run_id, row["epoch"], row["train_loss"], row["val_loss"], row["val_dice"], row["lr"], row["seconds"]],
        )


def forget_epochs_after(project: Project, run_id: int, epoch: int) -> None:
    """On resume, epochs after the checkpoint are redone: drop their rows."""
    with transaction(project) as con:
        con.execute("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", [run_id, epoch])

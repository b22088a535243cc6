"""The `experiments`, `runs` and `epochs` tables: the only writer of each, and the questions asked of them.

A run is a training fold (kind 'train'), an ensemble scored on cross-validation ('ensemble') or an evaluation of a
prediction folder ('evaluation'). Training opens and closes its runs in short transactions, so other processes can
read the catalog between epochs.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import duckdb

ENSEMBLE_PREFIX = "ensemble:"


def ensemble_name(members) -> str:
    """The configuration name of an ensemble run, members sorted so each pair has one name."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two configurations, got {list(members)}")
    return ENSEMBLE_PREFIX + "+".join(sorted(members))


def ensemble_members(configuration: str) -> tuple[str, ...]:
    """The configurations of 'ensemble:<a>+<b>', or (configuration,) for a single one."""
    if configuration.startswith(ENSEMBLE_PREFIX):
        return tuple(configuration[len(ENSEMBLE_PREFIX) :].split("+"))
    return (configuration,)


@dataclass(frozen=True)
class ExperimentRow:
    name: str
    dataset: str
    spec: dict  # the resolved spec, as recorded
    spec_hash: str


@dataclass(frozen=True)
class TrainingRun:
    run_id: int
    status: str
    epochs: int | None
    spec_hash: str | None
    run_dir: str | None
    pid: int | None
    host: str | None


def record_experiment(con: duckdb.DuckDBPyConnection, *, name: str, dataset: str, spec: dict, spec_hash: str) -> None:
    con.execute(
        "INSERT INTO experiments (name, dataset, spec, spec_hash) VALUES (?, ?, ?, ?) ON CONFLICT (name) "
        "DO UPDATE SET dataset = excluded.dataset, spec = excluded.spec, spec_hash = excluded.spec_hash",
        [name, dataset, json.dumps(spec), spec_hash],
    )


def experiment_row(con: duckdb.DuckDBPyConnection, name: str) -> ExperimentRow | None:
    row = con.execute("SELECT name, dataset, spec, spec_hash FROM experiments WHERE name = ?", [name]).fetchone()
    return None if row is None else ExperimentRow(row[0], row[1], json.loads(row[2]), row[3])


def experiment_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM experiments ORDER BY name").fetchall()]


def experiments_with_runs(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT DISTINCT experiment FROM runs").fetchall()}


def latest_training_run(
    con: duckdb.DuckDBPyConnection, *, experiment: str, configuration: str, fold: str
) -> TrainingRun | None:
    """The fold's newest training run, whatever its status."""
    row = con.execute(
        "SELECT run_id, status, epochs, spec_hash, run_dir, pid, host FROM runs WHERE experiment = ? "
        "AND configuration = ? AND fold = ? AND kind = 'train' ORDER BY run_id DESC LIMIT 1",
        [experiment, configuration, fold],
    ).fetchone()
    return None if row is None else TrainingRun(*row)


def start_training_run(
    con: duckdb.DuckDBPyConnection,
    *,
    experiment: str,
    configuration: str,
    fold: str,
    plan: str,
    spec_hash: str,
    epochs: int,
    device: str,
    run_dir: str,
    world_size: int = 1,
) -> int:
    """A new 'running' training run owned by this process (rank 0 of `world_size`); returns its id."""
    return con.execute(
        "INSERT INTO runs (experiment, configuration, fold, kind, status, plan, spec_hash, epochs, device, run_dir, "
        "pid, host, world_size) VALUES (?, ?, ?, 'train', 'running', ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
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
            world_size,
        ],
    ).fetchone()[0]


def reopen_run(
    con: duckdb.DuckDBPyConnection, run_id: int, *, epochs: int, spec_hash: str, device: str, world_size: int = 1
) -> None:
    """A resumed or extended run is 'running' again, owned by this process, with the world size it resumes with."""
    con.execute(
        "UPDATE runs SET status = 'running', epochs = ?, spec_hash = ?, device = ?, error = NULL, finished_at = NULL, "
        "pid = ?, host = ?, world_size = ? WHERE run_id = ?",
        [epochs, spec_hash, device, os.getpid(), socket.gethostname(), world_size, run_id],
    )


def finish_run(con: duckdb.DuckDBPyConnection, run_id: int, *, status: str, error: str | None = None) -> None:
    con.execute(
        "UPDATE runs SET status = ?, error = ?, finished_at = current_timestamp WHERE run_id = ?",
        [status, error, run_id],
    )


def record_finished_run(
    con: duckdb.DuckDBPyConnection,
    *,
    experiment: str,
    configuration: str,
    fold: str,
    kind: str,
    run_dir: str,
    spec_hash: str | None = None,
) -> int:
    """A run that is finished as it is recorded (an ensemble or an evaluation); returns its id."""
    return con.execute(
        "INSERT INTO runs (experiment, configuration, fold, kind, status, spec_hash, run_dir, finished_at) "
        "VALUES (?, ?, ?, ?, 'finished', ?, ?, current_timestamp) RETURNING run_id",
        [experiment, configuration, fold, kind, spec_hash, run_dir],
    ).fetchone()[0]


def record_epoch(con: duckdb.DuckDBPyConnection, run_id: int, row: dict) -> None:
    con.execute(
        "INSERT OR REPLACE INTO epochs (run_id, epoch, train_loss, val_loss, val_dice, lr, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [run_id, row["epoch"], row["train_loss"], row["val_loss"], row["val_dice"], row["lr"], row["seconds"]],
    )


def forget_epochs_after(con: duckdb.DuckDBPyConnection, run_id: int, epoch: int) -> None:
    """On resume, epochs after the checkpoint are redone: drop their rows."""
    con.execute("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", [run_id, epoch])


def finished_folds(
    con: duckdb.DuckDBPyConnection, experiment: str, *, cross_validation: bool = False
) -> dict[str, list[str]]:
    """configuration -> folds whose newest training run finished (`result_runs`); without fold 'all' when
    `cross_validation`. Folds in order ('0'..'4', then 'all')."""
    rows = con.execute(
        "SELECT configuration, fold FROM result_runs WHERE experiment = ? AND kind = 'train' "
        "AND (NOT ? OR fold <> 'all')",
        [experiment, cross_validation],
    ).fetchall()
    found: dict[str, list[str]] = {}
    for configuration, fold in rows:
        found.setdefault(configuration, []).append(fold)
    key = lambda fold: (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)  # noqa: E731
    return {c: sorted(folds, key=key) for c, folds in sorted(found.items())}


@dataclass(frozen=True)
class ValidationKeys:
    validation_hash: str | None  # the prediction settings its validation segmentations were made with
    scoring_hash: str | None  # the evaluation settings its metrics were computed with


def validation_keys(con: duckdb.DuckDBPyConnection, run_id: int) -> ValidationKeys:
    row = con.execute("SELECT validation_hash, scoring_hash FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return ValidationKeys(*row) if row else ValidationKeys(None, None)


def record_validation(con: duckdb.DuckDBPyConnection, run_id: int, *, validation_hash: str) -> None:
    """New validation segmentations: their scores are not current until they are scored again."""
    con.execute("UPDATE runs SET validation_hash = ?, scoring_hash = NULL WHERE run_id = ?", [validation_hash, run_id])


def record_scoring(con: duckdb.DuckDBPyConnection, run_id: int, *, scoring_hash: str) -> None:
    con.execute("UPDATE runs SET scoring_hash = ? WHERE run_id = ?", [scoring_hash, run_id])


def result_epochs(con: duckdb.DuckDBPyConnection, experiment: str) -> list[tuple]:
    """(configuration, fold, epoch, train_loss, val_loss, val_dice, lr) of every epoch of the training runs that
    count (`result_runs`: the newest finished run per configuration and fold), by configuration, fold, epoch."""
    return con.execute(
        "SELECT r.configuration, r.fold, e.epoch, e.train_loss, e.val_loss, e.val_dice, e.lr "
        "FROM result_runs r JOIN epochs e ON e.run_id = r.run_id "
        "WHERE r.experiment = ? AND r.kind = 'train' ORDER BY r.configuration, r.fold, e.epoch",
        [experiment],
    ).fetchall()


def forget_experiment_runs(con: duckdb.DuckDBPyConnection, experiment: str) -> None:
    """Drop an experiment, its runs and their epochs (an imported model replacing it); its result rows go first,
    through `results.forget_experiment_results`."""
    con.execute(
        "DELETE FROM epochs WHERE run_id IN (SELECT run_id FROM runs WHERE experiment = ? AND kind <> 'evaluation')",
        [experiment],
    )
    con.execute("DELETE FROM runs WHERE experiment = ? AND kind <> 'evaluation'", [experiment])
    con.execute("DELETE FROM experiments WHERE name = ?", [experiment])

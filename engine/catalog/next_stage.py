"""The `next_stage_predictions` table: which low-res fold (and training run) handed each case over to the cascade.

The arrays themselves are in the run folders (`voxelbase.volumes.next_stage`); these rows say where each came from.
"""

from __future__ import annotations

import duckdb


def record_next_stage(
    con: duckdb.DuckDBPyConnection,
    *,
    experiment: str,
    configuration: str,
    next_configuration: str,
    case_id: str,
    fold: str,
    run_id: int,
) -> None:
    """One case's hand-over (replacing an earlier one of the same case and stage); call inside a transaction."""
    con.execute(
        "INSERT OR REPLACE INTO next_stage_predictions (experiment, configuration, next_configuration, case_id, fold, "
        "run_id) VALUES (?, ?, ?, ?, ?, ?)",
        [experiment, configuration, next_configuration, case_id, fold, run_id],
    )


def next_stage_cases(con: duckdb.DuckDBPyConnection, experiment: str, configuration: str) -> dict[str, tuple[str, int]]:
    """case id -> (fold, training run id) that made its stored hand-over, for one low-res stage."""
    rows = con.execute(
        "SELECT case_id, fold, run_id FROM next_stage_predictions WHERE experiment = ? AND configuration = ? "
        "ORDER BY case_id",
        [experiment, configuration],
    ).fetchall()
    return {case_id: (fold, int(run_id)) for case_id, fold, run_id in rows}

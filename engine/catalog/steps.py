"""The `steps` table of the declarative `run`: the key each completed step completed under (only writer here)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb


def recorded_steps(con: duckdb.DuckDBPyConnection, experiment: str) -> dict[str, dict]:
    """step name -> {'spec_hash', 'code_hash', 'inputs_hash'} of every step of `experiment` that completed."""
    rows = con.execute(
        "SELECT step, spec_hash, code_hash, inputs_hash FROM steps WHERE experiment = ?", [experiment]
    ).fetchall()
    return {step: {"spec_hash": s, "code_hash": c, "inputs_hash": i} for step, s, c, i in rows}


def record_step(
    con: duckdb.DuckDBPyConnection,
    *,
    experiment: str,
    step: str,
    spec_hash: str,
    code_hash: str,
    inputs_hash: str,
    seconds: float,
) -> None:
    con.execute(
        "INSERT OR REPLACE INTO steps (experiment, step, spec_hash, code_hash, inputs_hash, seconds, finished_at) "
        "VALUES (?, ?, ?, ?, ?, ?, current_timestamp)",
        [experiment, step, spec_hash, code_hash, inputs_hash, seconds],
    )


def step_keys(con: duckdb.DuckDBPyConnection, experiment: str, steps: Sequence[str]) -> list[tuple]:
    """(step, spec_hash, code_hash, inputs_hash, finished_at) of the named steps that completed, by name: what a
    step that builds on them depends on."""
    return con.execute(
        "SELECT step, spec_hash, code_hash, inputs_hash, CAST(finished_at AS VARCHAR) FROM steps "
        "WHERE experiment = ? AND list_contains(?, step) ORDER BY step",
        [experiment, list(steps)],
    ).fetchall()


def forget_steps(con: duckdb.DuckDBPyConnection, experiment: str) -> None:
    """Drop what `run` recorded for an experiment whose results were replaced from elsewhere (an imported model):
    its next `run` decides afresh instead of trusting keys of results that are gone."""
    con.execute("DELETE FROM steps WHERE experiment = ?", [experiment])

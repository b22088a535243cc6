"""Versioned catalog migrations: every `schema/NNN_name.sql` file is applied once, in order."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from engine.catalog.atomic import atomic

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
_MIGRATION = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def migration_files() -> list[tuple[int, str, Path]]:
    if not SCHEMA_DIR.is_dir():
        raise FileNotFoundError(f"schema folder not found at {SCHEMA_DIR}; install the package from its source tree")
    found = []
    for path in sorted(SCHEMA_DIR.iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return found


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply the migrations this catalog has not seen yet, each in its own transaction."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, path in migration_files():
        if version in done:
            continue
        with atomic(con):
            con.execute(path.read_text())
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
        applied.append(version)
    return applied

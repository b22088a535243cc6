"""Versioned catalog migrations: every `schema/NNN_name.sql` file is applied once, in order.

A version may also have a Python hook (`HOOKS`), run in the same transaction after its SQL: for changes to the
project's files that the catalog's records drive (010: the store as an OME-Zarr hierarchy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import duckdb

from voxelbase.catalog.atomic import atomic
from voxelbase.catalog.datasets import case_geometries
from voxelbase.catalog.preprocessed import case_properties
from voxelbase.project import Project
from voxelbase.resources import schema_dir
from voxelbase.store.layout import RAW_STAGE
from voxelbase.store.ome import CaseGeometry, upgrade_store

_MIGRATION = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def migration_files() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(schema_dir().iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match.group(1)), match.group(2), path))
    return found


def upgrade_store_from_catalog(con: duckdb.DuckDBPyConnection, store_root: Path | None = None) -> int:
    """Add the Zarr group nodes and OME-Zarr geometry an existing store lacks, from the catalog's geometry (raw cases
    from `cases`, preprocessed ones from it and their crop box and spacing in `preprocessed_cases`); no chunk is
    rewritten. The store is the catalog file's project's unless `store_root` is given. Returns the cases visited."""
    if store_root is None:
        row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
        if not row or not row[0]:  # an in-memory catalog has no store
            return 0
        # a catalog that predates 010 predates store locations (014) too: its store is the project's own folder
        store_root = Project(Path(row[0]).resolve().parent).default_store_path
    raw: dict[str, dict] = {}

    def geometry_of(dataset: str, stage: str, case_id: str) -> CaseGeometry | None:
        if dataset not in raw:
            raw[dataset] = case_geometries(con, dataset)
        found = raw[dataset].get(case_id)
        if found is None:
            return None
        geometry = CaseGeometry.of(found.spacing, found.origin, found.direction)
        if stage == RAW_STAGE:
            return geometry
        plan, _, configuration = stage.partition("/")
        properties = case_properties(con, dataset, case_id, plan=plan, configuration=configuration)
        if properties is None:  # stored but never recorded (a killed run): redone by the next preprocess
            return None
        return geometry.cropped(properties["bbox"][0::2], spacing=properties["target_spacing"])

    return upgrade_store(store_root, geometry_of)


HOOKS: dict[int, Callable[[duckdb.DuckDBPyConnection], object]] = {10: upgrade_store_from_catalog}


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
            if version in HOOKS:
                HOOKS[version](con)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
        applied.append(version)
    return applied

"""The `store_location` table: where the project's Zarr store lives when it is not `<project>/store`.

Written once, by the connection that creates the catalog of a project created with `--store`; checked by every
connection opened for a project that names a store, so a project never ends up with its data in two places.
"""

from __future__ import annotations

import duckdb

from voxelbase.project import Project, normalize_store
from voxelbase.store.location import location_mismatch, remember_recorded


def recorded_store(con: duckdb.DuckDBPyConnection) -> str | None:
    """The recorded location, or None: the project's own `store/` folder."""
    try:
        rows = con.execute("SELECT location FROM store_location").fetchall()
    except duckdb.CatalogException:  # a catalog from before the table (opened read-only, not yet migrated)
        return None
    return rows[0][0] if rows else None


def settle_store_location(
    con: duckdb.DuckDBPyConnection, project: Project, *, created: bool, read_only: bool
) -> str | None:
    """Record the store a new project asks for, refuse one that differs from an existing project's, and let the store
    layer know the answer (it asks once per process). Returns the recorded location."""
    recorded = recorded_store(con)
    if project.store is not None:
        given, default = normalize_store(project.store), str(project.default_store_path)
        if recorded is None and created and not read_only and given != default:
            con.execute("INSERT INTO store_location (location) VALUES (?)", [given])
            recorded = given
        kept = recorded or default
        if given != kept:
            raise location_mismatch(project, kept, given)
    remember_recorded(project.catalog_path, recorded)
    return recorded

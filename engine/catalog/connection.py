"""Short-lived DuckDB connections to the project catalog.

DuckDB lets one process write a database file at a time. Commands therefore open the catalog only for as
long as they need it and retry while another process holds the lock, so that `voxelbase sql` works while a
long `train` is running (the trainer writes in short transactions between epochs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import duckdb

from voxelbase.catalog.atomic import atomic
from voxelbase.catalog.migrations import migrate, migration_files
from voxelbase.catalog.store_location import recorded_store, settle_store_location
from voxelbase.errors import VoxelbaseError
from voxelbase.project import Project

LOCK_WAIT_SECONDS = 60.0


class CatalogError(VoxelbaseError, RuntimeError):
    """A problem with the catalog that the user can act on."""


def _is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def open_connection(
    project: Project, *, read_only: bool = False, wait: float = LOCK_WAIT_SECONDS
) -> duckdb.DuckDBPyConnection:
    """Open the catalog, creating and migrating it when writing; waits while another process holds the lock.

    Every connection also settles where the project's store lives (`settle_store_location`): a new project records
    the location it was created with, and a location that is not the project's is refused before anything is done."""
    path = project.catalog_path
    if read_only and not path.exists():
        raise CatalogError(f"no catalog at {path}: ingest a dataset first (voxelbase ingest SOURCE --name NAME)")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    con = _connect(path, read_only=read_only, wait=wait)
    if read_only and _behind(con):  # a catalog made by an older version: migrate it once, then read
        con.close()
        open_connection(project, wait=wait).close()
        return open_connection(project, read_only=True, wait=wait)
    try:
        if not read_only:
            migrate(con)
        settle_store_location(con, project, created=created, read_only=read_only)
    except Exception:
        con.close()
        raise
    return con


def _connect(path, *, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as error:
            if not _is_lock_error(error) or time.monotonic() > deadline:
                raise CatalogError(f"cannot open the catalog {path}: {error}") from error
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def read_store_location(project: Project, *, wait: float = LOCK_WAIT_SECONDS) -> str | None:
    """The store location the catalog records (None: `<project>/store`), read without migrating anything: worker
    processes ask this, and they never write the catalog."""
    con = _connect(project.catalog_path, read_only=True, wait=wait)
    try:
        return recorded_store(con)
    finally:
        con.close()


def _behind(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    except duckdb.CatalogException:
        return True
    return any(version not in done for version, _, _ in migration_files())


@contextlib.contextmanager
def connect(project: Project | str | None = None, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A catalog connection for the duration of a `with` block."""
    con = open_connection(Project.resolve(project), read_only=read_only)
    try:
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def transaction(project: Project | str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writing connection whose statements commit together or not at all (also on Ctrl-C)."""
    with connect(project) as con, atomic(con):
        yield con

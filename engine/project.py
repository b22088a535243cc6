"""Where a project's files live: the catalog, the Zarr store and the run folders.

A project is a directory; nothing is created until a command writes into it (constructors do no I/O). The catalog
and the run folders are always inside it. The store is `<project>/store` unless the project was created with another
location (`voxelbase --store URL`, e.g. `s3://bucket/prefix`); the catalog records that location, so later commands
find it without being told (`voxelbase.store.location`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voxelbase.store.location import StorePath

DEFAULT_PROJECT = "voxelbase-project"
PROJECT_ENV = "VOXELBASE_PROJECT"


def is_url(location: str) -> bool:
    """A store location naming an fsspec filesystem other than the local one (`s3://...`, `gs://...`)."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() not in ("file", "local")


def normalize_store(location: str | os.PathLike) -> str:
    """One spelling per location, so that a recorded and a given one compare equal when they name the same place:
    a URL without trailing '/', a local folder (or `file://` URL) as an absolute path."""
    text = os.fspath(location).strip()
    if not text:
        raise ValueError("the store location is empty")
    if is_url(text):
        return text.rstrip("/")
    if "://" in text:
        text = text.partition("://")[2]
    return str(Path(text).expanduser().absolute())


@dataclass(frozen=True)
class Project:
    root: Path
    # the store location asked for (normalized), or None: the one the catalog records, else `<root>/store`
    store: str | None = None

    @classmethod
    def resolve(
        cls, project: str | os.PathLike | Project | None = None, *, store: str | os.PathLike | None = None
    ) -> Project:
        """The project from an explicit argument, else $VOXELBASE_PROJECT, else ./voxelbase-project; `store` asks
        for a store location (checked against the catalog's when the store is first used)."""
        wanted = normalize_store(store) if store is not None else None
        if isinstance(project, Project):
            return project if wanted is None else dataclasses.replace(project, store=wanted)
        chosen = project if project is not None else os.environ.get(PROJECT_ENV, DEFAULT_PROJECT)
        return cls(Path(chosen).expanduser().absolute(), store=wanted)

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def default_store_path(self) -> Path:
        """`<root>/store`: the store of every project created without another location."""
        return self.root / "store"

    @property
    def store_path(self) -> StorePath:
        """The store's root: a local folder (`pathlib.Path`) or an object-storage prefix (`upath.UPath`). Reads the
        catalog's recorded location once per process (see `voxelbase.store.location.store_root`)."""
        from voxelbase.store.location import store_root

        return store_root(self)

    @property
    def runs_path(self) -> Path:
        return self.root / "runs"

    @property
    def plans_path(self) -> Path:
        return self.root / "plans"

    def run_dir(self, experiment: str, configuration: str, fold: str) -> Path:
        return self.runs_path / experiment / configuration / f"fold_{fold}"

"""Where a project's files live: the catalog, the Zarr store and the run folders.

A project is a directory; nothing is created until a command writes into it (constructors do no I/O).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROJECT = "voxelbase-project"
PROJECT_ENV = "VOXELBASE_PROJECT"


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def resolve(cls, project: str | os.PathLike | Project | None = None) -> Project:
        """The project from an explicit argument, else $VOXELBASE_PROJECT, else ./voxelbase-project."""
        if isinstance(project, Project):
            return project
        chosen = project if project is not None else os.environ.get(PROJECT_ENV, DEFAULT_PROJECT)
        return cls(Path(chosen).expanduser().absolute())

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def store_path(self) -> Path:
        return self.root / "store"

    @property
    def runs_path(self) -> Path:
        return self.root / "runs"

    @property
    def plans_path(self) -> Path:
        return self.root / "plans"

    def run_dir(self, experiment: str, configuration: str, fold: str) -> Path:
        return self.runs_path / experiment / configuration / f"fold_{fold}"

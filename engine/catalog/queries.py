"""The user's own SQL over the catalog (`voxelbase sql`), returned as an Arrow table."""

from __future__ import annotations

import pyarrow as pa

from voxelbase.catalog.connection import connect
from voxelbase.project import Project


def run_query(query: str, *, project: Project | str | None = None, params: list | None = None) -> pa.Table:
    """Any SQL over the catalog, through a read-only connection; an empty table for statements without rows."""
    with connect(project, read_only=True) as con:
        relation = con.sql(query, params=params or None)
        return pa.table({}) if relation is None else relation.to_arrow_table()

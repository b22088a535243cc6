"""Read queries over the catalog, returned as Arrow tables."""

from __future__ import annotations

import pyarrow as pa

from engine.catalog.connection import connect
from engine.project import Project


def run_query(query: str, *, project: Project | str | None = None, params: list | None = None) -> pa.Table:
    """Any SQL over the catalog, through a read-only connection; an empty table for statements without rows."""
    with connect(project, read_only=True) as con:
        relation = con.sql(query, params=params or None)
        return pa.table({}) if relation is None else relation.to_arrow_table()


def dataset_overview(project: Project | str | None = None) -> pa.Table:
    return run_query(
        """
        SELECT d.name,
               count(c.case_id) FILTER (WHERE c.split = 'train') AS train_cases,
               count(c.case_id) FILTER (WHERE c.split = 'test') AS test_cases,
               d.n_channels,
               (SELECT string_agg(ch.name, ', ' ORDER BY ch.channel) FROM channels ch WHERE ch.dataset = d.name) AS channels,
               (SELECT string_agg(l.name || '=' || coalesce(CAST(l.value AS VARCHAR), CAST(l.region_values AS VARCHAR)), ', '
                                  ORDER BY l.value NULLS LAST, l.name)
                  FROM labels l WHERE l.dataset = d.name) AS labels,
               d.layout, d.created_at
        FROM datasets d LEFT JOIN cases c ON c.dataset = d.name
        GROUP BY ALL ORDER BY d.name
        """,
        project=project,
    )

"""The DuckDB catalog, below every stage: connections, migrations from `schema/`, and one typed function per
question or write, grouped by table (`datasets`, `plans`, `preprocessed`, `runs`, `results`, `steps`).

No SQL lives outside this package and `schema/` (but the user's own, in `voxelbase sql`). Functions take an open
connection, so a stage decides what commits together: `with transaction(project) as con:` to write,
`with connect(project, read_only=True) as con:` to read.
"""

from voxelbase.catalog.connection import CatalogError, connect, transaction

__all__ = ["CatalogError", "connect", "transaction"]

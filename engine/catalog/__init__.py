"""The DuckDB catalog: connections, migrations from `schema/`, and queries."""

from engine.catalog.connection import CatalogError, connect, transaction

__all__ = ["CatalogError", "connect", "transaction"]

"""Ingest errors: each names the file and the problem."""


class IngestError(RuntimeError):
    """Bad input: nothing was changed in the catalog or the store."""

"""Ingest errors: each names the file and the problem."""

from voxelbase.errors import VoxelbaseError


class IngestError(VoxelbaseError, RuntimeError):
    """Bad input: nothing was changed in the catalog or the store."""

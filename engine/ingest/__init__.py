"""Ingest: dataset folders (nnU-Net v2 raw, MSD) into the Zarr store and the DuckDB catalog."""

from voxelbase.ingest.errors import IngestError
from voxelbase.ingest.pipeline import IngestResult, ingest_dataset

CODE_VERSION = "1"  # bump when this stage's results change: `voxelbase run` redoes the steps it performs

__all__ = ["IngestError", "IngestResult", "ingest_dataset"]

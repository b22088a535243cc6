"""The Zarr v3 store: case layout, chunking, compression and reads; group nodes and OME-Zarr metadata (`ome`); where
the store lives (a local folder or object storage) and the file operations on it (`location`)."""

from voxelbase.store.layout import (
    case_dir,
    case_exists,
    dataset_dir,
    open_case_arrays,
    patch_chunks,
    read_case,
    stage_dir,
    stage_name,
    write_array,
    write_case,
    write_stage_groups,
)
from voxelbase.store.location import StoreError
from voxelbase.store.ome import CaseGeometry, upgrade_store

__all__ = [
    "CaseGeometry",
    "StoreError",
    "case_dir",
    "case_exists",
    "dataset_dir",
    "open_case_arrays",
    "patch_chunks",
    "read_case",
    "stage_dir",
    "stage_name",
    "upgrade_store",
    "write_array",
    "write_case",
    "write_stage_groups",
]

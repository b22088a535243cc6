"""The Zarr v3 store: case layout, chunking, compression and reads."""

from engine.store.layout import (
    case_dir,
    dataset_dir,
    open_case_arrays,
    patch_chunks,
    read_case,
    stage_dir,
    stage_name,
    write_array,
    write_case,
)

__all__ = [
    "case_dir",
    "dataset_dir",
    "open_case_arrays",
    "patch_chunks",
    "read_case",
    "stage_dir",
    "stage_name",
    "write_array",
    "write_case",
]

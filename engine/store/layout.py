"""The Zarr v3 store: where each case lives and how its arrays are chunked and compressed.

Layout: `store/<dataset>/raw/<case>/{image,label}` as ingested and
`store/<dataset>/<plan>/<configuration>/<case>/{image,label}` preprocessed; every folder down to each case is a
Zarr group and each case carries OME-Zarr 0.5 geometry (`voxelbase.store.ome`). Arrays are Blosc-compressed
(zstd, byte shuffle) through Zarr's own codecs; chunks are sized so that a training patch touches few chunks.
The store's root is a local folder or an object-storage prefix; every read and write goes through
`voxelbase.store.location`, so the paths here are `Path` or `UPath` alike (`StorePath`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from voxelbase.project import Project
from voxelbase.store.location import StorePath, is_remote, make_dirs, open_array, tree_bytes, zarr_store
from voxelbase.store.ome import NODE, CaseGeometry, dimension_names, ensure_hierarchy, write_case_group

RAW_STAGE = "raw"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # case ids and dataset names become folder names


def unsafe_name(name: str) -> str | None:
    """Why `name` cannot be a folder of the store (a case id or a dataset name), or None when it can."""
    if not SAFE_NAME.match(name) or ".." in name:
        return f"{name!r} is not a safe name (letters, digits, '.', '_', '-'; no '..')"
    return None


RAW_CHUNK_EDGE = 64  # raw cases are read whole by preprocessing; 64^3 keeps chunks ~0.5 MB for int16


def compressor(*, cname: str = "zstd", clevel: int = 3) -> BloscCodec:
    return BloscCodec(cname=cname, clevel=clevel, shuffle=BloscShuffle.shuffle)


def dataset_dir(project: Project, dataset: str) -> StorePath:
    return project.store_path / dataset


def stage_dir(project: Project, dataset: str, stage: str = RAW_STAGE) -> StorePath:
    """`raw`, or `<plan>/<configuration>` for preprocessed data."""
    return dataset_dir(project, dataset) / stage


def stage_name(plan: str, configuration: str) -> str:
    """The stage of a configuration's preprocessed cases: `<plan>/<configuration>`."""
    return f"{plan}/{configuration}"


def case_dir(project: Project, dataset: str, case_id: str, *, stage: str = RAW_STAGE) -> StorePath:
    return stage_dir(project, dataset, stage) / case_id


def case_exists(directory: StorePath) -> bool:
    """Whether a stored case is there to read: its image array's node, and on object storage also the case group's
    node, which is written last (`voxelbase.store.location`: a case without it is still being copied or deleted)."""
    if not (directory / "image" / NODE).is_file():
        return False
    return not is_remote(directory) or (directory / NODE).is_file()


def spatial_chunks(shape: Sequence[int], *, edge: int = RAW_CHUNK_EDGE) -> tuple[int, ...]:
    return tuple(max(1, min(int(s), edge)) for s in shape)


def patch_chunks(shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """Chunks of half a patch per axis (rounded up): a randomly placed patch touches at most 3 per axis, and
    reads little beyond itself, while chunks stay large enough to compress well."""
    patch = list(patch_size)
    if len(patch) < len(shape):  # 2d plans chunk one slice deep
        patch = [1] * (len(shape) - len(patch)) + patch
    return tuple(max(1, min(int(s), math.ceil(p / 2))) for s, p in zip(shape, patch))


def write_array(
    path: StorePath,
    data: np.ndarray,
    *,
    chunks: Sequence[int],
    cname: str = "zstd",
    axes: Sequence[str] | None = None,
) -> zarr.Array:
    """Write one array as a Zarr v3 array at `path` (overwriting), its axes named (c, z, y, x) or (z, y, x) as
    OME-Zarr wants (see `voxelbase.store.ome`), or `axes` when the array stores them in another order."""
    array = zarr.create_array(
        store=zarr_store(path),
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(int(c) for c in chunks),
        compressors=[compressor(cname=cname)],
        dimension_names=tuple(axes) if axes is not None else dimension_names(data.ndim),
        zarr_format=3,
        overwrite=True,
    )
    array[...] = data
    return array


def write_case(
    directory: StorePath,
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    spatial_chunk_shape: Sequence[int],
    geometry: CaseGeometry | None = None,
) -> None:
    """Write `image` (C, Z, Y, X) and `label` (Z, Y, X) of one case into `directory`, a Zarr group that records
    `geometry` as OME-Zarr metadata (see `voxelbase.store.ome`)."""
    make_dirs(directory)
    write_array(directory / "image", image, chunks=(1, *spatial_chunk_shape))
    if label is not None:
        write_array(directory / "label", label, chunks=spatial_chunk_shape)
    write_case_group(directory, geometry)


def write_stage_groups(project: Project, dataset: str, stage: str = RAW_STAGE) -> None:
    """Group nodes for the store root, the dataset and each level of the stage (existing ones are left alone)."""
    ensure_hierarchy(project.store_path, dataset, stage)


def open_case_arrays(
    project: Project, dataset: str, case_id: str, *, stage: str = RAW_STAGE
) -> tuple[zarr.Array, zarr.Array | None]:
    """The case's (image, label) Zarr arrays, opened lazily; label is None for unlabelled cases."""
    directory = case_dir(project, dataset, case_id, stage=stage)
    if not case_exists(directory):
        raise FileNotFoundError(f"no stored image for case {case_id!r} of dataset {dataset!r} at {directory}")
    image = open_array(directory / "image")
    label = open_array(directory / "label") if (directory / "label" / NODE).is_file() else None
    return image, label


def read_case(
    project: Project, dataset: str, case_id: str, *, stage: str = RAW_STAGE
) -> tuple[np.ndarray, np.ndarray | None]:
    """The case's arrays read fully into memory."""
    image, label = open_case_arrays(project, dataset, case_id, stage=stage)
    return image[...], (label[...] if label is not None else None)


def store_bytes(path: StorePath) -> int:
    return tree_bytes(path)

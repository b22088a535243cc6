"""Where patches come from: the cases of a split, nnU-Net's patch-centre rule, and chunk-aligned Zarr reads.

Sampling (pure, seeded) is separate from reading, so a batch is reproducible from its seed and tests can
check offsets against the stored arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from voxelbase.catalog import connect
from voxelbase.catalog.preprocessed import class_locations, preprocessed_shapes
from voxelbase.plan import ANNOTATED_KEY
from voxelbase.project import Project
from voxelbase.store.layout import case_dir
from voxelbase.store.location import open_array


@dataclass(frozen=True)
class CaseEntry:
    """A preprocessed case: its spatial shape and, per foreground label, sampled voxel coordinates (n, 3)."""

    case_id: str
    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray]


@dataclass(frozen=True)
class PatchRequest:
    """Sample `index` of a batch reads `size` voxels starting at `start` (may lie outside: padded)."""

    case: int
    start: tuple[int, ...]
    forced_foreground: bool


def load_cases(
    project: Project, dataset: str, *, plan: str, configuration: str, case_ids: Sequence[str]
) -> list[CaseEntry]:
    """Shapes and class locations of preprocessed cases, in two queries (read once, before training)."""
    wanted = sorted(set(case_ids))
    with connect(project, read_only=True) as con:
        shape_of = preprocessed_shapes(con, dataset, plan=plan, configuration=configuration)
        locations = class_locations(con, dataset, plan=plan, configuration=configuration)
    missing = [c for c in wanted if c not in shape_of]
    if missing:
        raise LookupError(
            f"cases {missing[:5]}{'...' if len(missing) > 5 else ''} of dataset {dataset!r} are not preprocessed for "
            f"{plan}/{configuration}: run `voxelbase preprocess {dataset} --configuration {configuration} --plan {plan}`"
        )
    return [CaseEntry(case_id, shape_of[case_id], locations.get(case_id, {})) for case_id in wanted]


def forced_foreground(index: int, batch_size: int, oversample: float) -> bool:
    """nnU-Net's rule: the last round(B * oversample) samples of a batch are centred on foreground."""
    return not index < round(batch_size * (1 - oversample))


def sample_batch(
    rng: np.random.Generator,
    cases: Sequence[CaseEntry],
    *,
    batch_size: int,
    read_size: Sequence[int],
    patch_size: Sequence[int],
    oversample: float,
    probabilistic: bool = False,
    annotated_only: bool = False,
) -> list[PatchRequest]:
    """Pick cases uniformly and patch starts as nnU-Net's data loader does (3-D, or 2-D slices of 3-D cases).

    `read_size` is the larger patch read for augmentation context, `patch_size` the final one. Per axis, with
    pad = read - final (grown to read - extent for cases smaller than the read patch), uniform starts lie in
    nnU-Net's [lbs, ubs] = [-ceil(pad / 2), extent + ceil(pad / 2) - read]; forced samples centre the read patch on
    a voxel of a uniformly chosen class present in the case (start = max(lbs, voxel - read // 2)). 2-D: the slice is
    that voxel's (nnU-Net v2 treats 2-D as 3-D with a patch one slice deep), or uniform for the other samples.

    `annotated_only` (a dataset with an ignore label) is nnU-Net's rule for sparse annotations: a sample that is not
    forced is centred on an annotated voxel (`ANNOTATED_KEY`) instead of a uniform start, and a forced one on a
    class other than that key whenever the case has one, so no patch is centred on ignored voxels.
    """
    requests = []
    two_d = len(patch_size) == 2
    read = (1, *read_size) if two_d else tuple(read_size)
    final = (1, *patch_size) if two_d else tuple(patch_size)
    for index in range(batch_size):
        case_index = int(rng.integers(len(cases)))
        case = cases[case_index]
        # nnU-Net's probabilistic variant forces each sample with probability `oversample` instead
        force = bool(rng.random() < oversample) if probabilistic else forced_foreground(index, batch_size, oversample)
        centre = None
        if annotated_only and not force:
            annotated = case.locations.get(ANNOTATED_KEY)
            if annotated is not None and len(annotated):
                centre = annotated[int(rng.integers(len(annotated)))]
        elif force:
            eligible = [label for label, where in case.locations.items() if len(where)]
            if ANNOTATED_KEY in eligible and len(eligible) > 1:
                eligible.remove(ANNOTATED_KEY)
            if eligible:
                where = case.locations[eligible[int(rng.integers(len(eligible)))]]
                centre = where[int(rng.integers(len(where)))]
        start = []
        for axis, (extent, r, f) in enumerate(zip(case.shape, read, final)):
            pad = max(r - f, r - extent)
            low, high = (-pad) // 2, extent + pad // 2 + pad % 2 - r
            if centre is not None:
                start.append(max(low, int(centre[axis]) - r // 2))
            else:
                start.append(int(rng.integers(low, high + 1)))
        requests.append(PatchRequest(case_index, tuple(start), force))
    return requests


def read_patch(
    array: zarr.Array, start: Sequence[int], size: Sequence[int], *, fill=0, out: np.ndarray | None = None
) -> np.ndarray:
    """array[..., start:start+size] over the last len(size) axes, padded with `fill` where it lies outside.

    Only the chunks the in-bounds part touches are read and decompressed. `out` (shape (*leading axes, *size))
    receives the patch in place, cast to its dtype, so a batch is assembled without another copy.
    """
    spatial = array.shape[-len(size) :]
    inside, placement = [], []
    for s, n, extent in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, extent)
        hi = max(hi, lo)
        inside.append(slice(lo, hi))
        placement.append(slice(lo - s, lo - s + (hi - lo)))
    lead = array.shape[: array.ndim - len(size)]
    if out is None:
        out = np.empty((*lead, *size), dtype=array.dtype)
    elif out.shape != (*lead, *size):
        raise ValueError(f"out has shape {out.shape}, the patch is {(*lead, *size)}")
    covered = all(p.start == 0 and p.stop == n for p, n in zip(placement, size))
    if not covered:
        out[...] = fill
    if all(p.stop > p.start for p in placement):
        region = (*[slice(0, n) for n in lead], *inside)
        target = out[(..., *placement)]
        files = chunk_files(array)
        if files is None:
            target[...] = array[region]
        else:
            files.read(region, target)
    return out


@dataclass(frozen=True)
class ChunkFiles:
    """A local Zarr v3 array (bytes + optional Blosc codecs, regular chunks) read chunk file by chunk file.

    zarr-python's synchronous API hands every read to its event-loop thread and back, which costs about a
    millisecond per chunk; for the few small chunks of a patch that is several times the decompression itself.
    Reading the chunk files directly keeps the same bytes, the same codec (Blosc releases the GIL, so worker
    threads decompress in parallel) and touches only the chunks the region overlaps. Anything else is read
    through zarr.
    """

    root: Path
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill: object
    blosc: bool
    array: zarr.Array

    def read(self, region: tuple[slice, ...], target: np.ndarray) -> None:
        """target[...] = array[region] (target has the region's shape)."""
        from numcodecs import blosc

        encode = self.array.metadata.encode_chunk_key
        ranges = [range(r.start // c, (r.stop - 1) // c + 1) for r, c in zip(region, self.chunks)]
        for coords in itertools.product(*ranges):
            origin = [i * c for i, c in zip(coords, self.chunks)]
            lows = [max(r.start, o) for r, o in zip(region, origin)]
            highs = [min(r.stop, o + c) for r, o, c in zip(region, origin, self.chunks)]
            dst = tuple(slice(lo - r.start, hi - r.start) for lo, hi, r in zip(lows, highs, region))
            try:
                raw = (self.root / encode(coords)).read_bytes()
            except FileNotFoundError:  # never written: the fill value
                target[dst] = self.fill
                continue
            chunk = np.frombuffer(blosc.decompress(raw) if self.blosc else raw, dtype=self.dtype)
            chunk = chunk.reshape(self.chunks)
            target[dst] = chunk[tuple(slice(lo - o, hi - o) for lo, hi, o in zip(lows, highs, origin))]


def chunk_files(array: zarr.Array) -> ChunkFiles | None:
    """The direct reader for `array`, or None when its storage or codecs are not the plain local kind."""
    from zarr.codecs import BloscCodec, BytesCodec
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.storage import LocalStore

    meta = array.metadata
    store = array.store
    if getattr(meta, "zarr_format", None) != 3 or not isinstance(store, LocalStore):
        return None
    codecs = tuple(meta.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or not isinstance(meta.chunk_grid, RegularChunkGrid):
        return None
    if len(codecs) > 2 or (len(codecs) == 2 and not isinstance(codecs[1], BloscCodec)):
        return None
    dtype = np.dtype(meta.data_type.to_native_dtype())
    if dtype.itemsize > 1:
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    return ChunkFiles(
        root=Path(store.root) / array.store_path.path,
        chunks=tuple(int(c) for c in meta.chunk_grid.chunk_shape),
        dtype=dtype,
        fill=meta.fill_value,
        blosc=len(codecs) == 2,
        array=array,
    )


class CaseArrays:
    """Open Zarr arrays of preprocessed cases, opened once per case and kept (metadata only, no voxels). On object
    storage they are zarr `FsspecStore` arrays: `read_patch` then fetches only the chunks a patch overlaps."""

    def __init__(self, project: Project, dataset: str, stage: str) -> None:
        self.project, self.dataset, self.stage = project, dataset, stage
        self._open: dict[str, tuple[zarr.Array, zarr.Array]] = {}

    def get(self, case_id: str) -> tuple[zarr.Array, zarr.Array]:
        if case_id not in self._open:
            directory = case_dir(self.project, self.dataset, case_id, stage=self.stage)
            self._open[case_id] = (open_array(directory / "image"), open_array(directory / "label"))
        return self._open[case_id]

"""Where patches come from: the cases of a split, nnU-Net's patch-centre rule, and chunk-aligned Zarr reads.

Sampling (pure, seeded) is separate from reading, so a batch is reproducible from its seed and tests can
check offsets against the stored arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from engine.catalog.queries import run_query
from engine.project import Project
from engine.store.layout import case_dir


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
    """Shapes and class locations of preprocessed cases, in one query each (read once, before training)."""
    wanted = sorted(set(case_ids))
    key = [dataset, plan, configuration]
    shapes = run_query(
        "SELECT case_id, shape FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ?",
        project=project,
        params=key,
    ).to_pylist()
    shape_of = {r["case_id"]: tuple(r["shape"]) for r in shapes}
    missing = [c for c in wanted if c not in shape_of]
    if missing:
        raise LookupError(
            f"cases {missing[:5]}{'...' if len(missing) > 5 else ''} of dataset {dataset!r} are not preprocessed for "
            f"{plan}/{configuration}: run `voxelbase preprocess {dataset} --configuration {configuration} --plan {plan}`"
        )
    rows = run_query(
        "SELECT case_id, label, z, y, x FROM class_locations WHERE dataset = ? AND plan = ? AND configuration = ? "
        "ORDER BY case_id, label, z, y, x",
        project=project,
        params=key,
    )
    ids = np.asarray(rows.column("case_id").to_pylist(), dtype=object)
    labels = rows.column("label").to_numpy()
    coords = (
        np.stack([rows.column(a).to_numpy() for a in ("z", "y", "x")], axis=1) if rows.num_rows else np.empty((0, 3))
    )
    entries = []
    for case_id in wanted:
        mine = ids == case_id
        locations = {int(v): coords[mine & (labels == v)].astype(np.int32) for v in np.unique(labels[mine])}
        entries.append(CaseEntry(case_id, shape_of[case_id], locations))
    return entries


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
) -> list[PatchRequest]:
    """Pick cases uniformly and patch starts as nnU-Net's data loader does (3-D, or 2-D slices of 3-D cases).

    `read_size` is the larger patch read for augmentation context, `patch_size` the final one; the read patch may
    extend past the case by up to half their difference (and to cover cases smaller than the patch).
    """
    requests = []
    two_d = len(patch_size) == 2
    for index in range(batch_size):
        case_index = int(rng.integers(len(cases)))
        case = cases[case_index]
        force = forced_foreground(index, batch_size, oversample)
        shape = case.shape[1:] if two_d else case.shape
        slice_z = None
        centre = None
        if force:
            eligible = [label for label, where in case.locations.items() if len(where)]
            if eligible:
                where = case.locations[eligible[int(rng.integers(len(eligible)))]]
                if two_d:  # nnU-Net: a random slice holding the class, then a voxel of it in that slice
                    slice_z = int(rng.choice(np.unique(where[:, 0])))
                    where = where[where[:, 0] == slice_z]
                voxel = where[int(rng.integers(len(where)))]
                centre = voxel[1:] if two_d else voxel
        if two_d and slice_z is None:
            slice_z = int(rng.integers(case.shape[0]))
        start = []
        for axis, (extent, read, final) in enumerate(zip(shape, read_size, patch_size)):
            pad = read - final
            if pad + extent < read:
                pad = read - extent
            low = -(pad // 2)
            high = extent + pad // 2 + pad % 2 - read
            start.append(
                max(low, int(centre[axis]) - read // 2) if centre is not None else int(rng.integers(low, high + 1))
            )
        if two_d:
            start = [slice_z, *start]
        requests.append(PatchRequest(case_index, tuple(start), force))
    return requests


def read_patch(array: zarr.Array, start: Sequence[int], size: Sequence[int], *, fill=0) -> np.ndarray:
    """array[..., start:start+size] over the last len(size) axes, padded with `fill` where it lies outside.

    Only the chunks the in-bounds part touches are read and decompressed.
    """
    spatial = array.shape[-len(size) :]
    inside, placement = [], []
    for s, n, extent in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, extent)
        hi = max(hi, lo)
        inside.append(slice(lo, hi))
        placement.append(slice(lo - s, lo - s + (hi - lo)))
    lead = array.shape[: array.ndim - len(size)]
    out = np.full((*lead, *size), fill, dtype=array.dtype)
    if all(p.stop > p.start for p in placement):
        out[(..., *placement)] = array[(..., *inside)]
    return out


class CaseArrays:
    """Open Zarr arrays of preprocessed cases, opened once per case and kept (metadata only, no voxels)."""

    def __init__(self, project: Project, dataset: str, stage: str) -> None:
        self.project, self.dataset, self.stage = project, dataset, stage
        self._open: dict[str, tuple[zarr.Array, zarr.Array]] = {}

    def get(self, case_id: str) -> tuple[zarr.Array, zarr.Array]:
        if case_id not in self._open:
            directory = case_dir(self.project, self.dataset, case_id, stage=self.stage)
            self._open[case_id] = (
                zarr.open_array(str(directory / "image"), mode="r"),
                zarr.open_array(str(directory / "label"), mode="r"),
            )
        return self._open[case_id]

"""The store as a Zarr v3 hierarchy other tools open: group nodes and OME-Zarr 0.5 metadata.

Every folder from the store root down to each case is a Zarr group (`zarr.json` with `node_type: group`), so
`zarr.open_group(store)` walks datasets, stages and cases. Each case group carries its geometry twice:

- `ome`: OME-Zarr 0.5 image metadata. One multiscale with a single level, the `image` array (C, Z, Y, X), axes
  `c` (channel) and `z`, `y`, `x` (space, millimeter), and a `scale` (1, spacing) and `translation` (0, origin)
  coordinate transformation, so an OME-Zarr reader opens the case at its physical scale. A 2d stage of a
  dataset whose coarsest axis is y or x stores its arrays in nnU-Net's transposed order: its axes are named so
  (e.g. `c, x, z, y`) and the scale and translation follow. OME-Zarr 0.5 has no
  rotation, so the translation is the ITK origin and is exact only for an identity direction.
- `voxelbase`: spacing, origin and direction as the catalog records them ((z, y, x) order; direction is ITK's
  3x3 matrix with rows and columns reversed to (z, y, x), row-major), plus the same three in ITK's own (x, y, z)
  order under `itk`, so nothing of the geometry is lost.

The arrays stay at `<case>/image` and `<case>/label` (training reads their chunk files directly, evaluation opens
them by path). OME-Zarr 0.5 wants every array to name its axes, so arrays carry `dimension_names`
(`c, z, y, x` and `z, y, x`); adding them to an old array rewrites its `zarr.json` only, never a chunk.

The label as an OME-Zarr label image: OME-Zarr puts label images at `<image>/labels/<name>`, an `image-label`
multiscale group whose levels are arrays *inside* that group. Dataset paths may not climb (`../../label` is
refused by the validator, `ome-zarr-models`, and by zarr itself: no `.`/`..` segments) and Zarr v3 has no links, so
a group cannot reference the existing `<case>/label` array. What validates without moving the array is a relative
filesystem symlink: `<case>/labels` is a labels group (`labels: ["label"]`), `<case>/labels/label` an image-label
group (`source.image: "../../"`) whose single level `0` is a symlink to `../../label`. The bytes exist once; the
symlink moves with the case folder (preprocessing's rename, ingest's staging swap) and `rglob` does not descend
into it, so stored sizes do not double. Where the filesystem refuses symlinks, and on object storage, which has none,
the labels group is left out and the label stays described by `voxelbase.label` only.

Writes are idempotent and never touch an array's chunks: a group node that exists is left as it is (its attributes
are merged into), and `upgrade_store` adds what an older store lacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelbase.store.location import NODE, StorePath, can_link, read_text_or_none, write_node_text

OME_VERSION = "0.5"
IMAGE_AXES = ("c", "z", "y", "x")
LABEL_AXES = ("z", "y", "x")
LABELS_GROUP = "labels"
LABEL_NAME = "label"  # the image-label group under `labels/`
LABEL_LEVEL = "0"  # the symlink inside it to the case's `label` array
UNIT = "millimeter"


@dataclass(frozen=True)
class CaseGeometry:
    """Spacing, origin and direction in (z, y, x) order, as the catalog's `cases` table records them."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> CaseGeometry:
        return cls(
            tuple(float(v) for v in spacing), tuple(float(v) for v in origin), tuple(float(v) for v in direction)
        )

    def cropped(self, start: Sequence[int], *, spacing: Sequence[float]) -> CaseGeometry:
        """The geometry of a crop starting at voxel `start` (z, y, x), resampled to `spacing`: a preprocessed case.

        The origin moves to the crop's first voxel; after resampling it stays there (to within the half-voxel
        convention of the resampling), the direction is unchanged.
        """
        matrix = np.asarray(self.direction, dtype=float).reshape(3, 3)
        offset = matrix @ (np.asarray(start, dtype=float) * np.asarray(self.spacing, dtype=float))
        origin = np.asarray(self.origin, dtype=float) + offset
        return CaseGeometry.of(spacing, origin.tolist(), self.direction)


def dimension_names(ndim: int) -> tuple[str, ...] | None:
    """The axis names of a stored array: (c, z, y, x) for an image, (z, y, x) for a label; None otherwise."""
    return {4: IMAGE_AXES, 3: LABEL_AXES}.get(ndim)


# --- zarr.json, read and written whole ------------------------------------------------------------------------------


def _read_node(directory: StorePath) -> dict | None:
    text = read_text_or_none(directory / NODE)
    return None if text is None else json.loads(text)


def _write_node(directory: StorePath, node: dict) -> None:
    """Replace `directory/zarr.json` atomically (a reader sees the old or the new document, never half)."""
    write_node_text(directory / NODE, json.dumps(node, indent=2))


def ensure_group(directory: StorePath, *, attributes: dict | None = None) -> bool:
    """Make `directory` a Zarr v3 group unless it already is a node (group or array); merge `attributes` into an
    existing group's. True when something was written."""
    node = _read_node(directory)
    if node is None:
        _write_node(directory, {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes or {})})
        return True
    if node.get("node_type") != "group" or not attributes:
        return False
    merged = {**node.get("attributes", {}), **attributes}
    if merged == node.get("attributes"):
        return False
    _write_node(directory, {**node, "attributes": merged})
    return True


def name_array_axes(array_dir: StorePath) -> bool:
    """Give an existing array its `dimension_names` (its `zarr.json` only; chunks untouched). True when changed."""
    node = _read_node(array_dir)
    if node is None or node.get("node_type") != "array" or node.get("dimension_names"):
        return False
    names = dimension_names(len(node["shape"]))
    if names is None:
        return False
    _write_node(array_dir, {**node, "dimension_names": list(names)})
    return True


def ensure_hierarchy(store_root: StorePath, dataset: str, stage: str) -> None:
    """Group nodes for the store root, the dataset and every level of `stage` (`raw`, or `<plan>/<configuration>`)."""
    ensure_group(store_root, attributes={"voxelbase": {"node": "store"}})
    ensure_group(store_root / dataset, attributes={"voxelbase": {"node": "dataset", "dataset": dataset}})
    directory = store_root / dataset
    parts = stage.split("/")
    for depth, part in enumerate(parts):
        directory = directory / part
        kind = "stage" if depth == len(parts) - 1 else "plan"
        ensure_group(directory, attributes={"voxelbase": {"node": kind, "stage": "/".join(parts[: depth + 1])}})


# --- case groups ----------------------------------------------------------------------------------------------------


def _axes(names: Sequence[str]) -> list[dict]:
    return [{"name": n, "type": "channel"} if n == "c" else {"name": n, "type": "space", "unit": UNIT} for n in names]


def _multiscale(name: str, path: str, names: Sequence[str], geometry: CaseGeometry) -> dict:
    """`names` in the array's own axis order (a transposed 2-D stage stores e.g. (c, x, z, y)): scale and
    translation follow it."""
    spacing, origin = dict(zip(LABEL_AXES, geometry.spacing)), dict(zip(LABEL_AXES, geometry.origin))
    return {
        "name": name,
        "axes": _axes(names),
        "datasets": [
            {
                "path": path,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [spacing.get(n, 1.0) for n in names]},
                    {"type": "translation", "translation": [origin.get(n, 0.0) for n in names]},
                ],
            }
        ],
    }


def _itk(geometry: CaseGeometry) -> dict:
    matrix = np.asarray(geometry.direction, dtype=float).reshape(3, 3)[::-1, ::-1]
    return {
        "axes": ["x", "y", "z"],
        "spacing": list(reversed(geometry.spacing)),
        "origin": list(reversed(geometry.origin)),
        "direction": [float(v) for v in matrix.ravel()],
    }


def case_attributes(case_id: str, geometry: CaseGeometry, *, has_label: bool, axes: Sequence[str] = LABEL_AXES) -> dict:
    """The case group's attributes: `ome` (OME-Zarr 0.5 image) and `voxelbase` (full geometry, always in (z, y, x);
    `axes` is the order the arrays store them in)."""
    return {
        "ome": {"version": OME_VERSION, "multiscales": [_multiscale(case_id, "image", ("c", *axes), geometry)]},
        "voxelbase": {
            "case_id": case_id,
            "axes": list(axes),
            "spacing": list(geometry.spacing),
            "origin": list(geometry.origin),
            "direction": list(geometry.direction),
            "itk": _itk(geometry),
            "image": "image",
            "label": "label" if has_label else None,
        },
    }


def read_case_geometry(case_directory: StorePath) -> CaseGeometry | None:
    """The geometry a case group records, or None when it records none (a store not yet upgraded)."""
    node = _read_node(case_directory)
    found = (node or {}).get("attributes", {}).get("voxelbase")
    if not found or "spacing" not in found:
        return None
    return CaseGeometry.of(found["spacing"], found["origin"], found["direction"])


def _link_label(case_directory: StorePath, case_id: str, geometry: CaseGeometry, axes: Sequence[str]) -> None:
    """`labels/label` as an OME-Zarr image-label whose one level is a symlink to `../../label` (see module doc)."""
    if not can_link(case_directory):
        return
    labels = case_directory / LABELS_GROUP
    image_label = labels / LABEL_NAME
    level = image_label / LABEL_LEVEL
    if not (level.is_symlink() or level.exists()):  # a copy that followed the link holds the array itself: fine
        image_label.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(Path("..") / ".." / "label", level, target_is_directory=True)
        except (OSError, NotImplementedError):  # a filesystem without symlinks: no labels group at all
            if not any(image_label.iterdir()):
                image_label.rmdir()
            if labels.is_dir() and not any(labels.iterdir()):
                labels.rmdir()
            return
    ensure_group(labels, attributes={"ome": {"version": OME_VERSION, "labels": [LABEL_NAME]}})
    ensure_group(
        image_label,
        attributes={
            "ome": {
                "version": OME_VERSION,
                "image-label": {"version": OME_VERSION, "source": {"image": "../../"}},
                "multiscales": [_multiscale(f"{case_id}/label", LABEL_LEVEL, axes, geometry)],
            }
        },
    )


def write_case_group(
    case_directory: StorePath,
    geometry: CaseGeometry | None,
    *,
    case_id: str | None = None,
    axes: Sequence[str] = LABEL_AXES,
) -> None:
    """Make a stored case (arrays already written) a described group: its node and attributes, the arrays' axis
    names and the label image. Without a geometry only the group node is written (`upgrade_store` adds the rest).
    `case_id` defaults to the folder's name (give it when writing under a temporary name); `axes` names the
    arrays' spatial axes in their stored order."""
    case_id = case_id or case_directory.name
    has_label = (case_directory / "label" / NODE).is_file()
    for array in ("image", "label"):
        name_array_axes(case_directory / array)
    if geometry is None:
        ensure_group(case_directory)
        return
    ensure_group(case_directory, attributes=case_attributes(case_id, geometry, has_label=has_label, axes=axes))
    if has_label:
        _link_label(case_directory, case_id, geometry, axes)


# --- upgrading a store written before these nodes existed ------------------------------------------------------------


def _visible_dirs(directory: StorePath) -> Iterator[StorePath]:
    """Sub-folders that are part of the store (temporary `.`-folders of ingest and preprocessing are not)."""
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            if path.is_dir() and not path.is_symlink() and not path.name.startswith("."):
                yield path


def stored_cases(store_root: StorePath) -> Iterator[tuple[str, str, StorePath]]:
    """(dataset, stage, case folder) of every stored case: a folder holding an `image` array."""

    def walk(dataset: str, stage: list[str], directory: StorePath) -> Iterator[tuple[str, str, StorePath]]:
        for child in _visible_dirs(directory):
            if (child / "image" / NODE).is_file():
                yield dataset, "/".join(stage), child
            elif child.name not in ("image", "label", LABELS_GROUP):
                yield from walk(dataset, [*stage, child.name], child)

    for dataset_directory in _visible_dirs(store_root):
        yield from walk(dataset_directory.name, [], dataset_directory)


GeometryLookup = Callable[[str, str, str], CaseGeometry | None]  # (dataset, stage, case id) -> geometry


def upgrade_store(store_root: StorePath, geometry_of: GeometryLookup) -> int:
    """Add the group nodes, attributes, array axis names and label images an older store lacks, in place.

    `geometry_of(dataset, stage, case_id)` answers from the catalog (the store imports no catalog). No array is
    moved or rewritten: only `zarr.json` documents and the label symlink are added. Returns the cases visited.
    """
    if not store_root.is_dir():
        return 0
    count = 0
    for dataset, stage, case_directory in stored_cases(store_root):
        if stage:
            ensure_hierarchy(store_root, dataset, stage)
        write_case_group(case_directory, geometry_of(dataset, stage, case_directory.name))
        count += 1
    return count

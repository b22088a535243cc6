"""Ingesting one case: read, validate, measure and write it to the store, while it is in memory once.

Runs in worker processes; it returns catalog rows to the main process and never opens the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxelbase.images import Geometry, ImageFileError, file_hash, read_channels, read_label
from voxelbase.ingest.errors import IngestError
from voxelbase.ingest.layouts import CaseSource
from voxelbase.store.layout import spatial_chunks, write_case
from voxelbase.store.location import StorePath
from voxelbase.store.ome import CaseGeometry

SAMPLES_PER_CASE = 10_000  # foreground intensity samples per case and channel, drawn with replacement
SAMPLE_SEED = 1234


@dataclass
class CaseRecord:
    """Everything the catalog learns about one case."""

    case: dict
    label_stats: list[tuple[int, int]] = field(default_factory=list)  # (label value, voxels)
    foreground: list[dict] = field(default_factory=list)  # per channel
    samples: list[np.ndarray] = field(default_factory=list)  # per channel, float32


def _content_hash(files: list[Path]) -> str:
    try:
        return file_hash(files, check_gzip=True)
    except ImageFileError as error:
        raise IngestError(str(error)) from error


def smallest_label_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise IngestError(f"label value {max_value} is too large")


def crop_bbox(image: np.ndarray) -> tuple[int, ...]:
    """Half-open bounding box (z0, z1, y0, y1, x0, x1) of voxels nonzero in any channel; all zeros when empty."""
    nonzero = np.any(image != 0, axis=0)
    box: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(nonzero, axis=other))
        box += [int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, 0]
    return tuple(box)


def _read_case(source: CaseSource, *, declared: frozenset[int]) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    try:
        image, geometry = read_channels(source.image_files, four_d=source.four_d)
        label = None
        if source.label_file:
            label = read_label(source.label_file, shape=image.shape[1:], geometry=geometry, declared=declared)
    except ImageFileError as error:
        raise IngestError(str(error)) from error
    return image, label, geometry


def ingest_case(source: CaseSource, staging: StorePath, *, declared: frozenset[int], n_channels: int) -> CaseRecord:
    """Read, validate, measure and store one case under `staging/<case_id>`."""
    image, label, geometry = _read_case(source, declared=declared)
    if image.shape[0] != n_channels:
        raise IngestError(
            f"{source.image_files[0]}: has {image.shape[0]} channel(s), dataset.json declares {n_channels}"
        )
    if label is not None:
        label = label.astype(smallest_label_dtype(max(declared)), copy=False)

    write_case(
        staging / source.case_id,
        image,
        label,
        spatial_chunk_shape=spatial_chunks(image.shape[1:]),
        geometry=CaseGeometry.of(geometry.spacing, geometry.origin, geometry.direction),
    )
    files = [*source.image_files, *([source.label_file] if source.label_file else [])]
    record = CaseRecord(
        case={
            "case_id": source.case_id,
            "split": source.split,
            "shape": list(image.shape[1:]),
            "spacing": list(geometry.spacing),
            "origin": list(geometry.origin),
            "direction": list(geometry.direction),
            "crop_bbox": list(crop_bbox(image)),
            "image_dtype": str(image.dtype),
            "label_dtype": str(label.dtype) if label is not None else None,
            "image_files": [str(p) for p in source.image_files],
            "label_file": str(source.label_file) if source.label_file else None,
            "source_bytes": sum(p.stat().st_size for p in files),
            "content_hash": _content_hash(files),
        }
    )
    if label is not None:
        counts = np.bincount(label.ravel().astype(np.int64))
        record.label_stats = [(int(v), int(n)) for v, n in enumerate(counts) if n]
        _foreground_statistics(record, image, label > 0)
    return record


def _foreground_statistics(record: CaseRecord, image: np.ndarray, foreground: np.ndarray) -> None:
    """Exact per-channel statistics over foreground voxels and an equal-size fixed-seed sample per case.

    As nnU-Net does, every case contributes the same number of samples (drawn with replacement), so that
    dataset-level percentiles weigh cases equally whatever their foreground size.
    """
    for channel in range(image.shape[0]):
        values = image[channel][foreground]
        if values.size == 0:
            record.foreground.append(
                {"channel": channel, "voxels": 0, "min": None, "max": None, "mean": None, "std": None}
            )
            record.samples.append(np.empty(0, np.float32))
            continue
        as_float = values.astype(np.float64)
        record.foreground.append(
            {
                "channel": channel,
                "voxels": int(values.size),
                "min": float(as_float.min()),
                "max": float(as_float.max()),
                "mean": float(as_float.mean()),
                "std": float(as_float.std()),
            }
        )
        rng = np.random.RandomState(SAMPLE_SEED)
        record.samples.append(rng.choice(values, SAMPLES_PER_CASE).astype(np.float32))

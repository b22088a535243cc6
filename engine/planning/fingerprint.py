"""The dataset fingerprint, read from the catalog's fingerprint views (schema/003_fingerprint.sql).

The result has the shape of nnU-Net's `dataset_fingerprint.json` (per-case spacings and shapes after
crop, per-channel foreground intensity properties, median relative size after cropping) plus what its
planner reads from dataset.json (channel names, labels, number of training cases), so that
`rules.plan_experiment` takes either. Every check that would make planning meaningless happens here,
before anything is written.
"""

from __future__ import annotations

from typing import Any

import duckdb

from voxelbase.catalog.datasets import dataset_names, fingerprint_rows
from voxelbase.planning.presets import PlanningError


def load_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, Any]:
    """The fingerprint of `dataset` from SQL, or a PlanningError saying why it cannot be planned."""
    rows = fingerprint_rows(con, dataset)
    if rows is None:
        known = dataset_names(con)
        hint = f"known datasets: {', '.join(known)}" if known else "the catalog has no datasets yet"
        raise PlanningError(
            f"dataset {dataset!r} does not exist ({hint}); ingest it first: voxelbase ingest SOURCE --name {dataset}"
        )
    cases, n_channels = rows.cases, rows.n_channels
    if not cases or rows.n_labelled == 0:
        raise PlanningError(
            f"dataset {dataset!r} has no labelled training cases (imagesTr with labelsTr); nothing to plan from"
        )
    empty = [case_id for case_id, _, shape, _, _ in cases if min(shape) <= 0]
    if empty:
        raise PlanningError(
            f"dataset {dataset!r}: the crop to nonzero of case {empty[0]!r} is empty (the image is zero everywhere)"
            + (f", and {len(empty) - 1} more case(s)" if len(empty) > 1 else "")
            + "; remove or fix the case and ingest again"
        )
    if all(fg == 0 for *_, fg in cases):
        raise PlanningError(
            f"dataset {dataset!r} has no labelled training cases: every training label is background only "
            "(no voxel > 0); nothing to plan from"
        )
    channel_names = rows.channel_names
    if len(channel_names) != n_channels:
        channel_names = {str(c): channel_names.get(str(c), f"channel_{c}") for c in range(n_channels)}
    properties: dict[str, dict[str, float]] = {}
    for channel, name, mean, std, median, lo, hi, p005, p995 in rows.intensity:
        if lo is None or hi is None or lo == hi:
            raise PlanningError(
                f"dataset {dataset!r}: channel {channel} ({name}) is constant ({lo}) over all foreground voxels; "
                "it carries no information and cannot be normalized; drop the channel or fix the images"
            )
        properties[str(channel)] = {
            "max": float(hi),
            "mean": float(mean),
            "median": float(median),
            "min": float(lo),
            "percentile_00_5": float(p005),
            "percentile_99_5": float(p995),
            "std": float(std),
        }
    missing = [c for c in channel_names if c not in properties]
    if missing:
        raise PlanningError(f"dataset {dataset!r}: no foreground intensity statistics for channel(s) {missing}")
    return {
        "dataset": dataset,
        "dataset_hash": rows.content_hash,
        "case_ids": [row[0] for row in cases],
        "spacings": [list(map(float, row[1])) for row in cases],
        "shapes_after_crop": [list(map(int, row[2])) for row in cases],
        "median_relative_size_after_cropping": float(rows.median_relative_size_after_cropping),
        "foreground_intensity_properties_per_channel": properties,
        "channel_names": channel_names,
        "labels": rows.labels,
        "num_training": len(cases),
        **({"regions_class_order": rows.regions_class_order} if rows.regions_class_order else {}),
    }

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

from engine.planning.presets import PlanningError


def _labels(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, Any]:
    rows = con.execute(
        "SELECT name, value, region_values, is_ignore FROM labels WHERE dataset = ? "
        "ORDER BY is_ignore, coalesce(value, list_min(region_values)), name",
        [dataset],
    ).fetchall()
    labels: dict[str, Any] = {}
    for name, value, regions, _ignore in rows:
        labels[name] = list(regions) if value is None and regions is not None else value
    return labels


def load_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, Any]:
    """The fingerprint of `dataset` from SQL, or a PlanningError saying why it cannot be planned."""
    found = con.execute("SELECT name, content_hash, n_channels FROM datasets WHERE name = ?", [dataset]).fetchone()
    if found is None:
        known = [row[0] for row in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
        hint = f"known datasets: {', '.join(known)}" if known else "the catalog has no datasets yet"
        raise PlanningError(
            f"dataset {dataset!r} does not exist ({hint}); ingest it first: voxelbase ingest SOURCE --name {dataset}"
        )
    _, content_hash, n_channels = found

    cases = con.execute(
        "SELECT case_id, spacing, shape_after_crop, relative_size_after_crop, foreground_voxels "
        "FROM fingerprint_cases WHERE dataset = ? ORDER BY case_id",
        [dataset],
    ).fetchall()
    labelled = con.execute(
        "SELECT count(*) FROM cases WHERE dataset = ? AND split = 'train' AND label_file IS NOT NULL", [dataset]
    ).fetchone()[0]
    if not cases or labelled == 0:
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

    summary = con.execute(
        "SELECT median_relative_size_after_cropping FROM fingerprint WHERE dataset = ?", [dataset]
    ).fetchone()
    intensity = con.execute(
        "SELECT channel, channel_name, mean, std, median, min, max, percentile_00_5, percentile_99_5 "
        "FROM fingerprint_intensity WHERE dataset = ? ORDER BY channel",
        [dataset],
    ).fetchall()
    channel_names = {
        str(channel): name
        for channel, name in con.execute(
            "SELECT channel, name FROM channels WHERE dataset = ? ORDER BY channel", [dataset]
        ).fetchall()
    }
    if len(channel_names) != n_channels:
        channel_names = {str(c): channel_names.get(str(c), f"channel_{c}") for c in range(n_channels)}
    properties: dict[str, dict[str, float]] = {}
    for channel, name, mean, std, median, lo, hi, p005, p995 in intensity:
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
        "dataset_hash": content_hash,
        "case_ids": [row[0] for row in cases],
        "spacings": [list(map(float, row[1])) for row in cases],
        "shapes_after_crop": [list(map(int, row[2])) for row in cases],
        "median_relative_size_after_cropping": float(summary[0]),
        "foreground_intensity_properties_per_channel": properties,
        "channel_names": channel_names,
        "labels": _labels(con, dataset),
        "num_training": len(cases),
    }

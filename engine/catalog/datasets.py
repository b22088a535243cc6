"""The dataset tables: `datasets`, `channels`, `labels`, `cases`, `label_stats`, `foreground_stats`,
`intensity_samples` (written by ingest, through `replace_dataset` only) and the questions stages ask of them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from voxelbase.catalog.plans import write_splits
from voxelbase.images import Geometry

# every table holding one dataset's rows, deleted together when a dataset is replaced
DATASET_TABLES = (
    "intensity_samples",
    "foreground_stats",
    "label_stats",
    "cases",
    "labels",
    "channels",
    "datasets",
)

CASE_SCHEMA = {
    "dataset": pa.string(),
    "case_id": pa.string(),
    "split": pa.string(),
    "shape": pa.list_(pa.int32()),
    "spacing": pa.list_(pa.float64()),
    "origin": pa.list_(pa.float64()),
    "direction": pa.list_(pa.float64()),
    "crop_bbox": pa.list_(pa.int32()),
    "image_dtype": pa.string(),
    "label_dtype": pa.string(),
    "image_files": pa.list_(pa.string()),
    "label_file": pa.string(),
    "source_bytes": pa.int64(),
    "content_hash": pa.string(),
}
FOREGROUND_SCHEMA = {
    "dataset": pa.string(),
    "case_id": pa.string(),
    "channel": pa.int32(),
    "voxels": pa.int64(),
    "min": pa.float64(),
    "max": pa.float64(),
    "mean": pa.float64(),
    "std": pa.float64(),
}


@dataclass(frozen=True)
class LabelRow:
    """A declared label: a value, or a region (a list of values), or the ignore label."""

    name: str
    value: int | None  # None for a region label
    region_values: tuple[int, ...] | None = None
    is_ignore: bool = False


def ignore_label_of(labels: Sequence[LabelRow]) -> int | None:
    return next((label.value for label in labels if label.is_ignore), None)


def has_region_labels(labels: Sequence[LabelRow]) -> bool:
    return any(label.region_values is not None for label in labels)


@dataclass(frozen=True)
class DatasetRows:
    """Everything ingest records about one dataset, as plain values (no stage types)."""

    name: str
    source: str
    layout: str
    file_ending: str
    channel_names: Sequence[str]
    labels: Sequence[LabelRow]
    description: dict
    content_hash: str
    cases: Sequence[dict]  # one dict per case, keys of CASE_SCHEMA but 'dataset'
    label_stats: Sequence[tuple[str, int, int]] = field(default_factory=list)  # (case_id, label, voxels)
    foreground: Sequence[dict] = field(default_factory=list)  # keys of FOREGROUND_SCHEMA but 'dataset'
    samples: Sequence[tuple[str, int, np.ndarray]] = field(default_factory=list)  # (case_id, channel, values)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    file_ending: str
    n_channels: int
    content_hash: str
    ignore_label: int | None
    has_regions: bool


def _table(rows: Sequence[dict], schema: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({key: pa.array([row[key] for row in rows], type=dtype) for key, dtype in schema.items()})


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Rows in through one Arrow table (DuckDB's executemany is slow for thousands of rows)."""
    if data.num_rows == 0:
        return
    con.register("incoming", data)
    try:
        columns = ", ".join(data.column_names)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")
    finally:
        con.unregister("incoming")


def replace_dataset(con: duckdb.DuckDBPyConnection, rows: DatasetRows) -> None:
    """Replace every row of one dataset (call inside a transaction): the only writer of the dataset tables."""
    name = rows.name
    write_splits(con, name, [])  # the old splits name the old cases
    for table in DATASET_TABLES:
        con.execute(f"DELETE FROM {table} WHERE {'name' if table == 'datasets' else 'dataset'} = ?", [name])
    con.execute(
        "INSERT INTO datasets (name, source, layout, file_ending, n_channels, content_hash, ignore_label, has_regions,"
        " description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            name,
            rows.source,
            rows.layout,
            rows.file_ending,
            len(rows.channel_names),
            rows.content_hash,
            ignore_label_of(rows.labels),
            has_region_labels(rows.labels),
            json.dumps(rows.description),
        ],
    )
    con.executemany("INSERT INTO channels VALUES (?, ?, ?)", [[name, i, c] for i, c in enumerate(rows.channel_names)])
    con.executemany(
        "INSERT INTO labels (dataset, value, name, region_values, is_ignore) VALUES (?, ?, ?, ?, ?)",
        [
            [name, lab.value, lab.name, list(lab.region_values) if lab.region_values else None, lab.is_ignore]
            for lab in rows.labels
        ],
    )
    _insert(con, "cases", _table([{"dataset": name, **case} for case in rows.cases], CASE_SCHEMA))
    stats = rows.label_stats
    _insert(
        con,
        "label_stats",
        pa.table(
            {
                "dataset": pa.array([name] * len(stats), pa.string()),
                "case_id": pa.array([s[0] for s in stats], pa.string()),
                "label": pa.array([s[1] for s in stats], pa.int32()),
                "voxels": pa.array([s[2] for s in stats], pa.int64()),
            }
        ),
    )
    _insert(con, "foreground_stats", _table([{"dataset": name, **f} for f in rows.foreground], FOREGROUND_SCHEMA))
    for case_id, channel, values in rows.samples:
        if values.size:
            _insert(
                con,
                "intensity_samples",
                pa.table(
                    {
                        "dataset": pa.array(np.full(values.size, name, dtype=object), pa.string()),
                        "case_id": pa.array(np.full(values.size, case_id, dtype=object), pa.string()),
                        "channel": pa.array(np.full(values.size, channel, np.int32)),
                        "value": pa.array(values, pa.float32()),
                    }
                ),
            )


def dataset_content_hash(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """The content hash a dataset was ingested with (None when it was never ingested)."""
    row = con.execute("SELECT content_hash FROM datasets WHERE name = ?", [name]).fetchone()
    return row[0] if row else None


def dataset_info(con: duckdb.DuckDBPyConnection, name: str) -> DatasetInfo | None:
    row = con.execute(
        "SELECT name, file_ending, n_channels, content_hash, ignore_label, has_regions FROM datasets WHERE name = ?",
        [name],
    ).fetchone()
    return None if row is None else DatasetInfo(*row)


def dataset_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]


def channel_names(con: duckdb.DuckDBPyConnection, dataset: str) -> list[str]:
    return [
        r[0] for r in con.execute("SELECT name FROM channels WHERE dataset = ? ORDER BY channel", [dataset]).fetchall()
    ]


def foreground_label_values(con: duckdb.DuckDBPyConnection, dataset: str) -> list[int]:
    """Declared plain label values above background, without the ignore label."""
    rows = con.execute(
        "SELECT value FROM labels WHERE dataset = ? AND value > 0 AND NOT is_ignore ORDER BY value", [dataset]
    ).fetchall()
    return [int(v) for (v,) in rows]


def case_geometries(
    con: duckdb.DuckDBPyConnection, dataset: str, case_ids: Sequence[str] | None = None, *, labelled: bool = False
) -> dict[str, Geometry]:
    """case id -> ingested geometry, for the given cases (all when None; only labelled ones with `labelled`)."""
    query = (
        "SELECT case_id, spacing, origin, direction FROM cases WHERE dataset = ? AND (NOT ? OR label_file IS NOT NULL)"
    )
    params: list = [dataset, labelled]
    if case_ids is not None:
        query += " AND list_contains(?, case_id)"
        params.append([str(c) for c in case_ids])
    rows = con.execute(query, params).fetchall()
    return {r[0]: Geometry.of({"spacing": r[1], "origin": r[2], "direction": r[3]}) for r in rows}


def training_cases(con: duckdb.DuckDBPyConnection, dataset: str) -> list[tuple[str, str, tuple[float, ...]]]:
    """(case id, content hash, spacing) of every labelled training case, by case id."""
    rows = con.execute(
        "SELECT case_id, content_hash, spacing FROM cases WHERE dataset = ? AND split = 'train' ORDER BY case_id",
        [dataset],
    ).fetchall()
    return [(c, h, tuple(float(s) for s in sp)) for c, h, sp in rows]


def training_spacing_range(con: duckdb.DuckDBPyConnection, dataset: str) -> tuple[list[float], list[float]] | None:
    """Per-axis (min, max) spacing of the dataset's training cases, or None when there are none."""
    row = con.execute(
        "SELECT [min(spacing[1]), min(spacing[2]), min(spacing[3])], "
        "[max(spacing[1]), max(spacing[2]), max(spacing[3])] FROM cases WHERE dataset = ? AND split = 'train'",
        [dataset],
    ).fetchone()
    if row is None or row[0] is None or row[0][0] is None:
        return None
    return list(row[0]), list(row[1])


def dataset_overview(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """One row per dataset: case counts, channels, labels (`voxelbase datasets`)."""
    return con.sql(
        """
        SELECT d.name,
               count(c.case_id) FILTER (WHERE c.split = 'train') AS train_cases,
               count(c.case_id) FILTER (WHERE c.split = 'test') AS test_cases,
               d.n_channels,
               (SELECT string_agg(ch.name, ', ' ORDER BY ch.channel) FROM channels ch WHERE ch.dataset = d.name) AS channels,
               (SELECT string_agg(l.name || '=' || coalesce(CAST(l.value AS VARCHAR), CAST(l.region_values AS VARCHAR)), ', '
                                  ORDER BY l.value NULLS LAST, l.name)
                  FROM labels l WHERE l.dataset = d.name) AS labels,
               d.layout, d.created_at
        FROM datasets d LEFT JOIN cases c ON c.dataset = d.name
        GROUP BY ALL ORDER BY d.name
        """
    ).to_arrow_table()


@dataclass(frozen=True)
class FingerprintRows:
    """What the fingerprint views (schema/003_fingerprint.sql) say about one dataset, row by row."""

    content_hash: str
    n_channels: int
    cases: list[tuple]  # (case_id, spacing, shape_after_crop, relative_size_after_crop, foreground_voxels)
    n_labelled: int
    median_relative_size_after_cropping: float | None
    intensity: list[tuple]  # (channel, name, mean, std, median, min, max, percentile_00_5, percentile_99_5)
    channel_names: dict[str, str]
    labels: dict[str, Any]  # name -> value, or a region's value list
    regions_class_order: list[int] | None = None  # region datasets: dataset.json's, one value per region


def fingerprint_rows(con: duckdb.DuckDBPyConnection, dataset: str) -> FingerprintRows | None:
    """The fingerprint of a dataset as the views compute it; None when the dataset does not exist."""
    found = con.execute("SELECT content_hash, n_channels FROM datasets WHERE name = ?", [dataset]).fetchone()
    if found is None:
        return None
    cases = con.execute(
        "SELECT case_id, spacing, shape_after_crop, relative_size_after_crop, foreground_voxels "
        "FROM fingerprint_cases WHERE dataset = ? ORDER BY case_id",
        [dataset],
    ).fetchall()
    n_labelled = con.execute(
        "SELECT count(*) FROM cases WHERE dataset = ? AND split = 'train' AND label_file IS NOT NULL", [dataset]
    ).fetchone()[0]
    summary = con.execute(
        "SELECT median_relative_size_after_cropping FROM fingerprint WHERE dataset = ?", [dataset]
    ).fetchone()
    intensity = con.execute(
        "SELECT channel, channel_name, mean, std, median, min, max, percentile_00_5, percentile_99_5 "
        "FROM fingerprint_intensity WHERE dataset = ? ORDER BY channel",
        [dataset],
    ).fetchall()
    channels = con.execute(
        "SELECT channel, name FROM channels WHERE dataset = ? ORDER BY channel", [dataset]
    ).fetchall()
    labels, regions_class_order = fingerprint_labels(con, dataset)
    return FingerprintRows(
        content_hash=found[0],
        n_channels=int(found[1]),
        cases=cases,
        n_labelled=int(n_labelled),
        median_relative_size_after_cropping=None if summary is None else summary[0],
        intensity=intensity,
        channel_names={str(channel): name for channel, name in channels},
        labels=labels,
        regions_class_order=regions_class_order,
    )


def dataset_regions(con: duckdb.DuckDBPyConnection, dataset: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, member values) of each region of a region dataset, in output order (dataset.json's order; a plain
    value v is the region (v,)); empty for a dataset of plain labels."""
    rows = fingerprint_labels(con, dataset)
    if not any(isinstance(v, list) for v in rows[0].values()):
        return []
    return [
        (name, tuple(int(x) for x in value) if isinstance(value, list) else (int(value),))
        for name, value in rows[0].items()
        if name != "ignore" and value != 0
    ]


def fingerprint_labels(con: duckdb.DuckDBPyConnection, dataset: str) -> tuple[dict[str, Any], list[int] | None]:
    """(name -> value or region value list, regions_class_order): plain labels by value; a region dataset's labels
    in dataset.json's order (region i is output i and writes regions_class_order[i], later regions win)."""
    labels: dict[str, Any] = {}
    for name, value, regions in con.execute(
        "SELECT name, value, region_values FROM labels WHERE dataset = ? "
        "ORDER BY is_ignore, coalesce(value, list_min(region_values)), name",
        [dataset],
    ).fetchall():
        labels[name] = list(regions) if value is None and regions is not None else value
    if not any(isinstance(v, list) for v in labels.values()):
        return labels, None
    raw = con.execute("SELECT description FROM datasets WHERE name = ?", [dataset]).fetchone()[0]
    description = json.loads(raw) if isinstance(raw, str) else (raw or {})
    declared = list(description.get("labels", {}))
    labels = dict(sorted(labels.items(), key=lambda kv: declared.index(kv[0]) if kv[0] in declared else 1 << 30))
    return labels, [int(v) for v in description.get("regions_class_order") or []] or None


def labelled_case_ids(con: duckdb.DuckDBPyConnection, dataset: str) -> list[str]:
    """Ids of the dataset's labelled training cases, sorted: what fold 'all' trains and validates on, and the
    only cases a split may name."""
    rows = con.execute(
        "SELECT case_id FROM cases WHERE dataset = ? AND split = 'train' AND label_file IS NOT NULL ORDER BY case_id",
        [dataset],
    ).fetchall()
    return [r[0] for r in rows]


def case_splits(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, str]:
    """case id -> 'train' (labelled) or 'test' (no label) for every case of a dataset: tells a case that does not
    exist from one that exists but cannot be trained on."""
    rows = con.execute(
        "SELECT case_id, CASE WHEN split = 'train' AND label_file IS NOT NULL THEN 'train' ELSE 'test' END "
        "FROM cases WHERE dataset = ? ORDER BY case_id",
        [dataset],
    ).fetchall()
    return dict(rows)


def labelled_cases_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str) -> str:
    """A digest of which cases fold 'all' uses (it has no split): a case added or removed changes it; 'missing'
    when there are none."""
    row = con.execute(
        "SELECT string_agg(case_id, ',' ORDER BY case_id) FROM cases "
        "WHERE dataset = ? AND split = 'train' AND label_file IS NOT NULL",
        [dataset],
    ).fetchone()
    return (row[0] if row else None) or "missing"

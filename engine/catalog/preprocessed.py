"""The `preprocessed_cases` and `class_locations` tables (written by preprocessing's main process, through
`write_preprocessed_case` only) and the questions training and validation ask of them."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

_LOCATION_SCHEMA = {
    "dataset": pa.string(),
    "plan": pa.string(),
    "configuration": pa.string(),
    "case_id": pa.string(),
    "label": pa.int32(),
    "z": pa.int32(),
    "y": pa.int32(),
    "x": pa.int32(),
}


def write_preprocessed_case(
    con: duckdb.DuckDBPyConnection,
    *,
    key: tuple[str, str, str, str],
    properties: dict[str, Any],
    input_digest: str,
    stored_bytes: int,
    seconds: float,
) -> None:
    """Replace one case's row and class locations (call inside a transaction). key = (dataset, plan, config, case)."""
    con.execute(
        "DELETE FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ? AND case_id = ?", list(key)
    )
    con.execute(
        "DELETE FROM class_locations WHERE dataset = ? AND plan = ? AND configuration = ? AND case_id = ?", list(key)
    )
    con.execute(
        "INSERT INTO preprocessed_cases (dataset, plan, configuration, case_id, shape, spacing, original_spacing, "
        "shape_before_cropping, bbox, shape_after_cropping, input_hash, stored_bytes, seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            *key,
            properties["shape_after_resampling"],
            properties["target_spacing"],
            properties["spacing"],
            properties["shape_before_cropping"],
            properties["bbox"],
            properties["shape_after_cropping"],
            input_digest,
            stored_bytes,
            seconds,
        ],
    )
    locations = properties["class_locations"]
    coords = [np.asarray(c, dtype=np.int32).reshape(-1, 3) for c in locations.values()]
    if not coords or sum(len(c) for c in coords) == 0:
        return
    labels = np.concatenate([np.full(len(c), value, np.int32) for value, c in zip(locations, coords)])
    stacked = np.concatenate(coords)
    n = len(labels)
    table = pa.table(
        {
            "dataset": pa.array([key[0]] * n, _LOCATION_SCHEMA["dataset"]),
            "plan": pa.array([key[1]] * n, _LOCATION_SCHEMA["plan"]),
            "configuration": pa.array([key[2]] * n, _LOCATION_SCHEMA["configuration"]),
            "case_id": pa.array([key[3]] * n, _LOCATION_SCHEMA["case_id"]),
            "label": pa.array(labels),
            "z": pa.array(stacked[:, 0]),
            "y": pa.array(stacked[:, 1]),
            "x": pa.array(stacked[:, 2]),
        }
    )
    con.register("incoming_locations", table)
    try:
        con.execute(f"INSERT INTO class_locations SELECT {', '.join(_LOCATION_SCHEMA)} FROM incoming_locations")
    finally:
        con.unregister("incoming_locations")


def class_locations(
    con: duckdb.DuckDBPyConnection, dataset: str, *, plan: str, configuration: str
) -> dict[str, dict[int, np.ndarray]]:
    """{case_id: {label: (k, 3) int32 (z, y, x)}} for every preprocessed case of a configuration, in one query."""
    data = con.execute(
        "SELECT case_id, label, z, y, x FROM class_locations WHERE dataset = ? AND plan = ? AND configuration = ? "
        "ORDER BY case_id, label, z, y, x",
        [dataset, plan, configuration],
    ).fetchnumpy()
    out: dict[str, dict[int, np.ndarray]] = {}
    if len(data["case_id"]) == 0:
        return out
    case_ids = np.asarray(data["case_id"], dtype=object)
    labels = np.asarray(data["label"])
    coords = np.stack([np.asarray(data[a], dtype=np.int32) for a in "zyx"], axis=1)
    boundaries = np.flatnonzero((case_ids[1:] != case_ids[:-1]) | (labels[1:] != labels[:-1])) + 1
    for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(labels)]):
        out.setdefault(str(case_ids[start]), {})[int(labels[start])] = coords[start:stop]
    return out


def case_properties(
    con: duckdb.DuckDBPyConnection, dataset: str, case_id: str, *, plan: str, configuration: str
) -> dict[str, Any] | None:
    """What undoing preprocessing needs for a stored case (spacings, shapes and crop box); None when not stored."""
    row = con.execute(
        "SELECT original_spacing, spacing, shape_before_cropping, bbox, shape_after_cropping, shape "
        "FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ? AND case_id = ?",
        [dataset, plan, configuration, case_id],
    ).fetchone()
    if row is None:
        return None
    names = ("spacing", "target_spacing", "shape_before_cropping", "bbox", "shape_after_cropping")
    properties = {name: list(value) for name, value in zip(names, row)}
    properties["shape_after_resampling"] = list(row[5])
    return properties


def preprocessed_shapes(
    con: duckdb.DuckDBPyConnection, dataset: str, *, plan: str, configuration: str
) -> dict[str, tuple[int, ...]]:
    """case id -> stored (Z, Y, X) shape of every preprocessed case of a configuration."""
    rows = con.execute(
        "SELECT case_id, shape FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ?",
        [dataset, plan, configuration],
    ).fetchall()
    return {case_id: tuple(shape) for case_id, shape in rows}


def preprocessed_input_hashes(
    con: duckdb.DuckDBPyConnection, dataset: str, *, plan: str, configuration: str
) -> dict[str, str]:
    """case id -> the input hash each stored case was preprocessed from."""
    rows = con.execute(
        "SELECT case_id, input_hash FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ?",
        [dataset, plan, configuration],
    ).fetchall()
    return dict(rows)


def preprocessed_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str, *, plan: str, configuration: str) -> str:
    """A digest of which cases are stored from which inputs: 'missing' when none are."""
    row = con.execute(
        "SELECT string_agg(case_id || ':' || input_hash, ',' ORDER BY case_id) FROM preprocessed_cases "
        "WHERE dataset = ? AND plan = ? AND configuration = ?",
        [dataset, plan, configuration],
    ).fetchone()
    return (row[0] if row else None) or "missing"

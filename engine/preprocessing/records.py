"""Catalog reads and writes of the preprocessing stage: plan lookup, per-case rows, class locations.

Only the main process calls the writers, one short transaction per finished case, so that a killed run keeps
every case it finished and `voxelbase sql` can read in between.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from engine.catalog import connect
from engine.errors import VoxelbaseError
from engine.planning import PlanningError, load_plan
from engine.project import Project

# Bump when the preprocessing numbers change, so that stored cases are redone.
PREPROCESSING_VERSION = "1"


class PreprocessingError(VoxelbaseError, RuntimeError):
    """A problem the user can act on; the message says what to do."""


@dataclass(frozen=True)
class PlannedCase:
    case_id: str
    content_hash: str
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class PreprocessingInputs:
    """Everything a preprocessing run needs from the catalog, read in one short read-only connection."""

    dataset: str
    plan_name: str
    configuration: str
    plan: dict[str, Any]
    cases: tuple[PlannedCase, ...]
    recorded: dict[str, str]  # case_id -> input_hash of the stored preprocessed case


def plan_hash(plan: dict[str, Any]) -> str:
    """Hash of the plan's content. `dataset_hash` is left out: re-ingesting changed cases changes it, but cases
    whose own bytes did not change (and whose plan values are the same) need not be redone."""
    content = {k: v for k, v in plan.items() if k != "dataset_hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def input_hash(content_hash: str, plan_digest: str) -> str:
    """What a preprocessed case depends on: the case's source bytes, the plan and this code's version."""
    return hashlib.sha256(f"{content_hash}|{plan_digest}|{PREPROCESSING_VERSION}".encode()).hexdigest()


def read_inputs(project: Project, dataset: str, *, configuration: str, plan: str | None) -> PreprocessingInputs:
    """Look up the dataset, its plan for `configuration` and its labelled cases; errors say what to run first."""
    if not project.catalog_path.exists():
        raise PreprocessingError(f"no catalog at {project.catalog_path}: ingest and plan {dataset!r} first")
    try:
        plan_dict = load_plan(project, dataset, configuration=configuration, plan=plan, current=True)
    except PlanningError as error:
        raise PreprocessingError(str(error)) from error
    plan = plan_dict["plan"]
    with connect(project, read_only=True) as con:
        cases = con.execute(
            "SELECT case_id, content_hash, spacing FROM cases WHERE dataset = ? AND split = 'train' ORDER BY case_id",
            [dataset],
        ).fetchall()
        recorded = dict(
            con.execute(
                "SELECT case_id, input_hash FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ?",
                [dataset, plan, configuration],
            ).fetchall()
        )
    return PreprocessingInputs(
        dataset=dataset,
        plan_name=plan,
        configuration=configuration,
        plan=plan_dict,
        cases=tuple(PlannedCase(c, h, tuple(float(s) for s in sp)) for c, h, sp in cases),
        recorded=recorded,
    )


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


def write_case_rows(
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


def load_class_locations(
    project: Project | str | None, dataset: str, *, plan: str, configuration: str
) -> dict[str, dict[int, np.ndarray]]:
    """{case_id: {label: (k, 3) int32 (z, y, x)}} for every preprocessed case of a configuration, in one query."""
    with connect(project, read_only=True) as con:
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


def load_case_properties(
    project: Project | str | None, dataset: str, case_id: str, *, plan: str, configuration: str
) -> dict[str, Any]:
    """The properties `revert_to_original` needs for a stored case (spacings, shapes and crop box)."""
    with connect(project, read_only=True) as con:
        row = con.execute(
            "SELECT original_spacing, spacing, shape_before_cropping, bbox, shape_after_cropping, shape "
            "FROM preprocessed_cases WHERE dataset = ? AND plan = ? AND configuration = ? AND case_id = ?",
            [dataset, plan, configuration, case_id],
        ).fetchone()
    if row is None:
        raise PreprocessingError(
            f"case {case_id!r} of {dataset!r} is not preprocessed for {plan}/{configuration}: "
            f"voxelbase preprocess {dataset} --configuration {configuration} --plan {plan}"
        )
    names = ("spacing", "target_spacing", "shape_before_cropping", "bbox", "shape_after_cropping")
    properties = {name: list(value) for name, value in zip(names, row)}
    properties["shape_after_resampling"] = list(row[5])
    return properties

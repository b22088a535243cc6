"""What a preprocessing run needs from the catalog, and the hashes that decide which cases are up to date."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from voxelbase.catalog import connect
from voxelbase.catalog.datasets import training_cases
from voxelbase.catalog.preprocessed import preprocessed_input_hashes
from voxelbase.errors import VoxelbaseError
from voxelbase.plan import ConfigurationPlan
from voxelbase.planning import PlanningError, load_plan
from voxelbase.project import Project

# Bump when the preprocessing numbers change, so that stored cases are redone.
PREPROCESSING_VERSION = "2"  # 2: a 2-D plan transposes a case whose coarsest axis is not z


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
    plan: ConfigurationPlan
    cases: tuple[PlannedCase, ...]
    recorded: dict[str, str]  # case_id -> input_hash of the stored preprocessed case


def plan_hash(plan: ConfigurationPlan) -> str:
    """Hash of the plan's content. `dataset_hash` is left out: re-ingesting changed cases changes it, but cases
    whose own bytes did not change (and whose plan values are the same) need not be redone."""
    content = {k: v for k, v in plan.to_dict().items() if k != "dataset_hash"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def input_hash(content_hash: str, plan_digest: str) -> str:
    """What a preprocessed case depends on: the case's source bytes, the plan and this code's version."""
    return hashlib.sha256(f"{content_hash}|{plan_digest}|{PREPROCESSING_VERSION}".encode()).hexdigest()


def read_inputs(project: Project, dataset: str, *, configuration: str, plan: str | None) -> PreprocessingInputs:
    """Look up the dataset, its plan for `configuration` and its labelled cases; errors say what to run first."""
    if not project.catalog_path.exists():
        raise PreprocessingError(f"no catalog at {project.catalog_path}: ingest and plan {dataset!r} first")
    try:
        configuration_plan = load_plan(project, dataset, configuration=configuration, plan=plan, current=True)
    except PlanningError as error:
        raise PreprocessingError(str(error)) from error
    plan = configuration_plan.plan
    with connect(project, read_only=True) as con:
        cases = training_cases(con, dataset)
        recorded = preprocessed_input_hashes(con, dataset, plan=plan, configuration=configuration)
    return PreprocessingInputs(
        dataset=dataset,
        plan_name=plan,
        configuration=configuration,
        plan=configuration_plan,
        cases=tuple(PlannedCase(*case) for case in cases),
        recorded=recorded,
    )

"""Step keys, derived in one place from what a step declares it reads.

A key has three parts, each a reason to run a step again:
- spec: the settings the step depends on (a function of the spec owned by the stage that does the work);
- code: the code versions of the stages that perform it (each stage's `CODE_VERSION`, and the package version);
- inputs: fingerprints of the data it reads (source files, the dataset's content, a plan, preprocessed cases,
  splits) and the recorded keys of the steps whose results it uses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from pathlib import Path

import voxelbase
from voxelbase.catalog import connect
from voxelbase.catalog.datasets import dataset_content_hash, labelled_cases_fingerprint
from voxelbase.catalog.next_stage import next_stage_cases
from voxelbase.catalog.plans import plan_fingerprint, splits_fingerprint
from voxelbase.catalog.preprocessed import preprocessed_fingerprint
from voxelbase.catalog.steps import step_keys
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_hash(stages: tuple[str, ...]) -> str:
    """The package version and the `CODE_VERSION` of each stage that performs a step: bumping one stage's
    version redoes its steps only (source-file hashes would retrain five folds for an edited comment)."""
    versions = {stage: importlib.import_module(f"voxelbase.{stage}").CODE_VERSION for stage in stages}
    return digest({"version": voxelbase.__version__, "stages": versions})


def source_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of every file under a source folder: cheap, and any change shows."""
    if not folder.is_dir():
        return f"missing:{folder}"
    entries = [
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return digest(entries)


def data_fingerprint(project: Project, spec: ExperimentSpec, plan: str, item: tuple[str, ...]) -> str:
    """One declared data input: ('source',), ('dataset',), ('plan', configuration), ('preprocessed',
    configuration), ('splits', fold) or ('next_stage', previous configuration)."""
    kind, *args = item
    if kind == "source":
        return source_fingerprint(spec.ingest_source())
    if not project.catalog_path.exists():
        return "missing"
    dataset = spec.dataset
    readers: dict[str, Callable] = {
        "dataset": lambda con: dataset_content_hash(con, dataset) or "missing",
        "plan": lambda con: plan_fingerprint(con, dataset, plan, *args),
        "preprocessed": lambda con: preprocessed_fingerprint(con, dataset, plan=plan, configuration=args[0]),
        # fold 'all' reads no split but every labelled case: adding a case retrains it
        "splits": lambda con: (
            labelled_cases_fingerprint(con, dataset) if args[0] == "all" else splits_fingerprint(con, dataset, args[0])
        ),
        # a cascade stage reads the previous stage's hand-over: which fold and training run made each case's
        "next_stage": lambda con: digest(sorted(next_stage_cases(con, spec.name, args[0]).items())),
    }
    with connect(project, read_only=True) as con:
        return readers[kind](con)


def results_fingerprint(project: Project, experiment: str, steps: tuple[str, ...]) -> str:
    """The recorded keys of the steps whose results a step uses: when any of them re-ran, so must it."""
    if not steps or not project.catalog_path.exists():
        return "missing"
    with connect(project, read_only=True) as con:
        rows = step_keys(con, experiment, steps)
    return digest(rows) if rows else "missing"

"""Step keys: what a step's result depends on, in three parts that each say why a step must run again.

- spec: the hash of the spec settings the step reads;
- code: the code version of the stages that perform it;
- inputs: fingerprints of the step's inputs (source files, the dataset's content, the plan, preprocessed cases).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import engine
from engine.catalog.queries import run_query
from engine.project import Project


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_hash(*stages: str) -> str:
    """The code version of the stages that perform a step: the package version, so an upgrade re-runs steps.

    Source-file hashes would re-run five folds of training for an edited comment; a release is the unit.
    """
    return digest({"version": engine.__version__, "stages": stages})


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


def _one(project: Project, query: str, params: list):
    rows = run_query(query, project=project, params=params).to_pylist() if project.catalog_path.exists() else []
    return rows[0] if rows else None


def dataset_fingerprint(project: Project, dataset: str) -> str:
    row = _one(project, "SELECT content_hash FROM datasets WHERE name = ?", [dataset])
    return row["content_hash"] if row else "missing"


def plan_fingerprint(project: Project, dataset: str, plan: str, configuration: str | None = None) -> str:
    query = "SELECT string_agg(configuration || ':' || md5(CAST(plan_json AS VARCHAR)), ',' ORDER BY configuration) AS h FROM plans WHERE dataset = ? AND plan = ?"
    params = [dataset, plan]
    if configuration:
        query += " AND configuration = ?"
        params.append(configuration)
    row = _one(project, query, params)
    return (row or {}).get("h") or "missing"


def preprocessed_fingerprint(project: Project, dataset: str, plan: str, configuration: str) -> str:
    row = _one(
        project,
        "SELECT string_agg(case_id || ':' || input_hash, ',' ORDER BY case_id) AS h FROM preprocessed_cases "
        "WHERE dataset = ? AND plan = ? AND configuration = ?",
        [dataset, plan, configuration],
    )
    return (row or {}).get("h") or "missing"


def splits_fingerprint(project: Project, dataset: str, fold: str) -> str:
    row = _one(
        project,
        "SELECT string_agg(case_id || ':' || role, ',' ORDER BY case_id) AS h FROM splits WHERE dataset = ? AND (fold = ? OR ? = 'all')",
        [dataset, fold, fold],
    )
    return (row or {}).get("h") or "missing"


def step_rows_fingerprint(project: Project, experiment: str, *prefixes: str) -> str:
    """The recorded keys of earlier steps (e.g. every `train:3d_fullres:*`), for steps that build on them."""
    if not project.catalog_path.exists():
        return "missing"
    rows = run_query(
        "SELECT step, spec_hash, code_hash, inputs_hash, finished_at FROM steps WHERE experiment = ? "
        "AND len(list_filter(?, lambda prefix: starts_with(step, prefix))) > 0 ORDER BY step",
        project=project,
        params=[experiment, list(prefixes)],
    ).to_pylist()
    return digest(rows) if rows else "missing"

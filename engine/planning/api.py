"""Plan a dataset from the catalog and record the plans: the `voxelbase plan` command as a function.

The fingerprint is read, the rules applied and the rows written in one catalog transaction, so a bad input
leaves the catalog as it was. The plan artifact `<project>/plans/<dataset>/<plan>.json` is written after
the commit by an atomic rename; its content is a pure function of the dataset and the options, so
re-planning rewrites the same bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from engine.catalog import connect, transaction
from engine.planning.fingerprint import load_fingerprint
from engine.planning.presets import PlanningError, get_preset, plan_name
from engine.planning.rules import plan_experiment
from engine.planning.splits import N_FOLDS, default_splits
from engine.project import Project

CONFIGURATION_ORDER = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")


@dataclass(frozen=True)
class PlanResult:
    dataset: str
    plan: str
    configurations: dict[str, dict[str, Any]]
    artifact: Path
    splits_written: bool

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per configuration, for printing."""
        out = []
        for name in _ordered(self.configurations):
            c = self.configurations[name]
            arch = c["architecture"]
            out.append(
                {
                    "configuration": name,
                    "spacing": "x".join(f"{s:.3g}" for s in c["spacing"]),
                    "patch_size": "x".join(str(p) for p in c["patch_size"]),
                    "batch": c["batch_size"],
                    "stages": arch["n_stages"],
                    "features": "-".join(str(f) for f in arch["features_per_stage"]),
                    "batch_dice": c["batch_dice"],
                    "normalization": ",".join(
                        n["scheme"] + ("(mask)" if n["use_nonzero_mask"] else "") for n in c["normalization"]
                    ),
                    "previous": c["previous_stage"] or "",
                }
            )
        return out


def _ordered(configurations: dict[str, Any]) -> list[str]:
    return sorted(configurations, key=lambda n: (CONFIGURATION_ORDER.index(n) if n in CONFIGURATION_ORDER else 99, n))


def _artifact_path(project: Project, dataset: str, plan: str) -> Path:
    return project.plans_path / dataset / f"{plan}.json"


def _artifact_text(configurations: dict[str, dict[str, Any]]) -> str:
    ordered = {name: configurations[name] for name in _ordered(configurations)}
    return json.dumps({"configurations": ordered}, indent=2, sort_keys=False) + "\n"


def _write_plans(con: duckdb.DuckDBPyConnection, dataset: str, plan: str, configs: dict[str, dict]) -> None:
    """Replace the rows of this dataset and plan, unless they already hold exactly these plans."""
    existing = dict(
        con.execute(
            "SELECT configuration, plan_json FROM plans WHERE dataset = ? AND plan = ?", [dataset, plan]
        ).fetchall()
    )
    if set(existing) == set(configs) and all(json.loads(existing[n]) == configs[n] for n in configs):
        return
    con.execute("DELETE FROM plans WHERE dataset = ? AND plan = ?", [dataset, plan])
    for name in _ordered(configs):
        c = configs[name]
        arch = c["architecture"]
        con.execute(
            "INSERT INTO plans (dataset, plan, configuration, spacing, patch_size, batch_size, median_shape, "
            "n_stages, features_per_stage, strides, kernel_sizes, normalization, batch_dice, dataset_hash, plan_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                dataset,
                plan,
                name,
                c["spacing"],
                c["patch_size"],
                c["batch_size"],
                c["median_image_size_in_voxels"],
                arch["n_stages"],
                arch["features_per_stage"],
                arch["strides"],
                arch["kernel_sizes"],
                [n["scheme"] for n in c["normalization"]],
                c["batch_dice"],
                c["dataset_hash"],
                json.dumps(c),
            ],
        )


def _write_splits(con: duckdb.DuckDBPyConnection, dataset: str, case_ids: list[str]) -> bool:
    """nnU-Net's default folds for the training cases, unless the dataset has splits already (or < 5 cases)."""
    if con.execute("SELECT count(*) FROM splits WHERE dataset = ?", [dataset]).fetchone()[0]:
        return False
    if len(case_ids) < N_FOLDS:
        return False
    for fold, split in enumerate(default_splits(case_ids)):
        for role in ("train", "val"):
            con.executemany(
                "INSERT INTO splits (dataset, fold, case_id, role) VALUES (?, ?, ?, ?)",
                [[dataset, str(fold), case_id, role] for case_id in split[role]],
            )
    return True


def plan_dataset(
    name: str,
    *,
    project: Project | str | None = None,
    preset: str = "nnunet",
    gpu_memory_gb: float | None = None,
) -> PlanResult:
    """Fingerprint `name` from the catalog, plan every configuration, record the plans (and default splits).

    Re-planning with the same options replaces the plan in place (no duplicate rows, same artifact);
    another preset or memory target is another plan name (e.g. 'resenc-l-24gb') beside the old ones.
    """
    chosen = get_preset(preset)
    memory = float(chosen.default_gpu_memory_gb if gpu_memory_gb is None else gpu_memory_gb)
    plan = plan_name(chosen, memory)
    resolved = Project.resolve(project)
    if not resolved.catalog_path.exists():
        raise PlanningError(
            f"dataset {name!r} does not exist (no catalog at {resolved.catalog_path}); "
            f"ingest it first: voxelbase ingest SOURCE --name {name}"
        )
    artifact = _artifact_path(resolved, name, plan)
    with transaction(resolved) as con:
        fingerprint = load_fingerprint(con, name)
        fingerprint["plan"] = plan
        configs = plan_experiment(fingerprint, preset=chosen.name, gpu_memory_gb=memory)
        text = _artifact_text(configs)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=artifact.parent, prefix=f".{plan}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            _write_plans(con, name, plan, configs)
            splits_written = _write_splits(con, name, fingerprint["case_ids"])
        except BaseException:
            os.unlink(tmp)
            raise
    os.replace(tmp, artifact)
    return PlanResult(dataset=name, plan=plan, configurations=configs, artifact=artifact, splits_written=splits_written)


def load_plan(
    project: Project | str | None,
    dataset: str,
    *,
    configuration: str,
    plan: str | None = None,
    current: bool = False,
) -> dict[str, Any]:
    """The plan artifact of one configuration; the newest plan of the dataset when `plan` is None.

    With `current`, a plan made before the dataset was last re-ingested is refused as stale.
    """
    with connect(project, read_only=True) as con:
        found = con.execute("SELECT content_hash FROM datasets WHERE name = ?", [dataset]).fetchone()
        if found is None:
            raise PlanningError(f"dataset {dataset!r} does not exist: voxelbase ingest SOURCE --name {dataset}")
        if plan is None:
            row = con.execute(
                "SELECT plan FROM plans WHERE dataset = ? GROUP BY plan ORDER BY max(created_at) DESC, plan LIMIT 1",
                [dataset],
            ).fetchone()
            if row is None:
                raise PlanningError(f"dataset {dataset!r} has no plans yet: run voxelbase plan {dataset}")
            plan = row[0]
        row = con.execute(
            "SELECT plan_json, dataset_hash FROM plans WHERE dataset = ? AND plan = ? AND configuration = ?",
            [dataset, plan, configuration],
        ).fetchone()
        if row is None:
            have = [
                r[0]
                for r in con.execute(
                    "SELECT configuration FROM plans WHERE dataset = ? AND plan = ? ORDER BY configuration",
                    [dataset, plan],
                ).fetchall()
            ]
            raise PlanningError(
                f"configuration {configuration!r} was never planned in plan {plan!r} of dataset {dataset!r}"
                + (f" (it has: {', '.join(have)})" if have else f"; run voxelbase plan {dataset}")
            )
    if current and row[1] != found[0]:
        raise PlanningError(
            f"plan {plan!r} is stale: dataset {dataset!r} was re-ingested after it was planned "
            f"(plan made from content {row[1][:12]}, dataset now {found[0][:12]}); re-plan first: voxelbase plan {dataset}"
        )
    return json.loads(row[0])


def load_splits(project: Project | str | None, dataset: str) -> dict[str, dict[str, list[str]]]:
    """{fold: {'train': [...], 'val': [...]}} with case ids sorted; folds '0'..'4' unless the user made others."""
    with connect(project, read_only=True) as con:
        rows = con.execute(
            "SELECT fold, role, case_id FROM splits WHERE dataset = ? ORDER BY fold, role, case_id", [dataset]
        ).fetchall()
    if not rows:
        raise PlanningError(f"dataset {dataset!r} has no splits: run voxelbase plan {dataset} (needs >= 5 cases)")
    folds: dict[str, dict[str, list[str]]] = {}
    for fold, role, case_id in rows:
        folds.setdefault(fold, {"train": [], "val": []}).setdefault(role, []).append(case_id)
    return dict(
        sorted(folds.items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0]))
    )

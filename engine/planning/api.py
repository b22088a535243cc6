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

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import dataset_content_hash, labelled_case_ids
from voxelbase.catalog.plans import (
    configuration_plan,
    dataset_splits,
    has_splits,
    newest_plan_name,
    planned_configurations,
    replace_plans,
    write_splits,
)
from voxelbase.plan import ConfigurationPlan, Plan
from voxelbase.planning.fingerprint import load_fingerprint
from voxelbase.planning.presets import PlanningError, get_preset, plan_name
from voxelbase.planning.rules import plan_experiment
from voxelbase.planning.splits import N_FOLDS, default_splits
from voxelbase.project import Project

CONFIGURATION_ORDER = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")


@dataclass(frozen=True)
class PlanResult:
    dataset: str
    plan: str
    configurations: dict[str, ConfigurationPlan]
    artifact: Path
    splits_written: bool

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per configuration, for printing."""
        out = []
        for name in _ordered(self.configurations):
            c = self.configurations[name]
            out.append(
                {
                    "configuration": name,
                    "spacing": "x".join(f"{s:.3g}" for s in c.spacing),
                    "patch_size": "x".join(str(p) for p in c.patch_size),
                    "batch": c.batch_size,
                    "stages": c.architecture.n_stages,
                    "features": "-".join(str(f) for f in c.architecture.features_per_stage),
                    "batch_dice": c.batch_dice,
                    "normalization": ",".join(
                        n.scheme + ("(mask)" if n.use_nonzero_mask else "") for n in c.normalization
                    ),
                    "previous": c.previous_stage or "",
                }
            )
        return out


def _ordered(configurations: dict[str, Any]) -> list[str]:
    return sorted(configurations, key=lambda n: (CONFIGURATION_ORDER.index(n) if n in CONFIGURATION_ORDER else 99, n))


def _artifact_path(project: Project, dataset: str, plan: str) -> Path:
    return project.plans_path / dataset / f"{plan}.json"


def _artifact_text(configurations: dict[str, ConfigurationPlan]) -> str:
    plan = Plan({name: configurations[name] for name in _ordered(configurations)})
    return json.dumps(plan.to_dict(), indent=2, sort_keys=False) + "\n"


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
        planned = plan_experiment(fingerprint, preset=chosen.name, gpu_memory_gb=memory)
        configs = {name: ConfigurationPlan.from_dict(planned[name]) for name in _ordered(planned)}
        text = _artifact_text(configs)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=artifact.parent, prefix=f".{plan}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            replace_plans(con, name, plan, configs)
            splits_written = not has_splits(con, name) and len(fingerprint["case_ids"]) >= N_FOLDS
            if splits_written:  # nnU-Net's default folds, unless the dataset has splits already (or < 5 cases)
                write_splits(con, name, default_splits(fingerprint["case_ids"]))
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
) -> ConfigurationPlan:
    """The plan of one configuration; the newest plan of the dataset when `plan` is None.

    With `current`, a plan made before the dataset was last re-ingested is refused as stale.
    """
    with connect(project, read_only=True) as con:
        content_hash = dataset_content_hash(con, dataset)
        if content_hash is None:
            raise PlanningError(f"dataset {dataset!r} does not exist: voxelbase ingest SOURCE --name {dataset}")
        plan = plan or newest_plan_name(con, dataset)
        if plan is None:
            raise PlanningError(f"dataset {dataset!r} has no plans yet: run voxelbase plan {dataset}")
        found = configuration_plan(con, dataset, plan, configuration)
        have = [] if found is not None else planned_configurations(con, dataset, plan)
    if found is None:
        raise PlanningError(
            f"configuration {configuration!r} was never planned in plan {plan!r} of dataset {dataset!r}"
            + (f" (it has: {', '.join(have)})" if have else f"; run voxelbase plan {dataset}")
        )
    if current and found.dataset_hash != content_hash:
        raise PlanningError(
            f"plan {plan!r} is stale: dataset {dataset!r} was re-ingested after it was planned "
            f"(plan made from content {(found.dataset_hash or '')[:12]}, dataset now {content_hash[:12]}); "
            f"re-plan first: voxelbase plan {dataset}"
        )
    return found


def missing_splits_message(dataset: str, n_labelled: int, *, fold: str | None = None) -> str:
    """Why a dataset has no splits, and the ways to get them: nnU-Net's default folds from `plan` when there
    are enough cases, the user's own (`voxelbase splits`), or fold 'all', which needs none."""
    what = f"dataset {dataset!r} has no splits"
    if fold is not None:
        what = f"fold {fold!r} of dataset {dataset!r} needs splits, and there are none"
    own = f"voxelbase splits {dataset} --folds N (nnU-Net's rule, 2 <= N <= {n_labelled})"
    bring = f"voxelbase splits {dataset} --import splits_final.json (nnU-Net's format)"
    if n_labelled >= N_FOLDS:
        return (
            f"{what}: run voxelbase plan {dataset} (it writes nnU-Net's default {N_FOLDS} folds), or {own}, or {bring}"
        )
    if n_labelled >= 2:
        return (
            f"{what}: its {n_labelled} labelled case(s) are fewer than the {N_FOLDS} nnU-Net's default folds need; "
            f"make folds with {own}, or {bring}, or train fold 'all' (every labelled case, no splits needed)"
        )
    return f"{what}: with {n_labelled} labelled case(s) there is nothing to cross-validate; train fold 'all' instead"


def _missing_splits(con: duckdb.DuckDBPyConnection, dataset: str, fold: str | None = None) -> PlanningError:
    if dataset_content_hash(con, dataset) is None:
        return PlanningError(f"dataset {dataset!r} does not exist: voxelbase ingest SOURCE --name {dataset}")
    return PlanningError(missing_splits_message(dataset, len(labelled_case_ids(con, dataset)), fold=fold))


def load_splits(project: Project | str | None, dataset: str) -> dict[str, dict[str, list[str]]]:
    """{fold: {'train': [...], 'val': [...]}} with case ids sorted; folds '0'..'4' unless the user made others."""
    with connect(project, read_only=True) as con:
        folds = dataset_splits(con, dataset)
        if not folds:
            raise _missing_splits(con, dataset)
    return folds


def fold_case_ids(project: Project | str | None, dataset: str, fold: str) -> tuple[list[str], list[str]]:
    """(train, validation) case ids of a fold.

    Fold 'all' trains on every labelled training case and validates on them too, as nnU-Net does: it reads the
    cases, not the splits, so it works on any number of cases (even one) and before any split exists. A numbered
    fold is the dataset's split of that number.
    """
    with connect(project, read_only=True) as con:
        if fold == "all":
            everything = labelled_case_ids(con, dataset)
            if everything:
                return everything, list(everything)
            if dataset_content_hash(con, dataset) is None:
                raise PlanningError(f"dataset {dataset!r} does not exist: voxelbase ingest SOURCE --name {dataset}")
            raise PlanningError(f"dataset {dataset!r} has no labelled training cases to train fold 'all' on")
        splits = dataset_splits(con, dataset)
        if not splits:
            raise _missing_splits(con, dataset, fold)
    if fold not in splits:
        raise PlanningError(
            f"fold {fold!r} is not among the splits of dataset {dataset!r} (folds: {', '.join(splits)}); "
            f"make other folds with voxelbase splits {dataset} --folds N or --import FILE, or train fold 'all'"
        )
    return splits[fold]["train"], splits[fold]["val"]

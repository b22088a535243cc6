"""Everything a fold's training needs, resolved once from the spec, the plan and the catalog.

Errors here are the user's to fix (not planned, not preprocessed, stale, unknown fold) and say what to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from voxelbase.catalog import connect
from voxelbase.catalog.next_stage import next_stage_cases
from voxelbase.errors import VoxelbaseError
from voxelbase.parallel import worker_count
from voxelbase.plan import ConfigurationPlan
from voxelbase.planning import PlanningError, fold_case_ids, load_plan, load_splits
from voxelbase.project import Project
from voxelbase.spec import AugmentConfig, ExperimentSpec
from voxelbase.spec.model import section_dict
from voxelbase.store import stage_name
from voxelbase.training.augment import initial_patch_size, use_dummy_2d
from voxelbase.training.loader import StreamSettings
from voxelbase.training.patches import CaseEntry, load_cases
from voxelbase.volumes.next_stage import next_stage_dir

# Train settings that choose what to run or where, not what is learned: they never invalidate a trained fold.
RUN_ONLY_KEYS = frozenset(
    {"configurations", "folds", "device", "num_workers", "pin_memory", "validate", "save_probabilities", "epochs"}
)


def training_settings(spec: ExperimentSpec) -> dict:
    """The spec settings a fold's weights depend on: the dataset, the learning settings of `[train]` (the plan
    among them) and `[augment]`, and the epoch count. `voxelbase run` keys its training steps on these plus the
    fold's data (the plan, the preprocessed cases, the split); the trainer's own key (`training_hash`) is the same
    settings and data, so the two never disagree about whether a fold is trained."""
    train = {k: v for k, v in section_dict(spec.train).items() if k not in RUN_ONLY_KEYS}
    return {"dataset": spec.dataset, "train": train, "augment": section_dict(spec.augment), "epochs": spec.train.epochs}


def training_hash(spec: ExperimentSpec, setup: FoldSetup) -> str:
    """`training_settings` but the epoch count, with the plan and the fold's cases: runs with equal hashes can
    resume or extend each other; a changed split, a new case in fold 'all' or a new plan start over."""
    settings = {k: v for k, v in training_settings(spec).items() if k != "epochs"}
    settings["data"] = {
        "plan": setup.plan.to_dict(),
        "train": sorted(c.case_id for c in setup.train_cases),
        "val": sorted(c.case_id for c in setup.val_cases),
    }
    if setup.previous_stage is not None:  # a cascade fold restarts when the previous stage was redone
        settings["data"]["previous_stage"] = [list(row) for row in setup.previous_stage_runs]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class TrainingError(VoxelbaseError, RuntimeError):
    """A training run that cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FoldSetup:
    plan: ConfigurationPlan
    plan_name: str
    stage: str
    train_cases: list[CaseEntry]
    val_cases: list[CaseEntry]
    train_settings: StreamSettings
    val_settings: StreamSettings
    previous_stage: Path | None = None  # a cascade stage: the previous stage's hand-over, one array per case
    previous_stage_runs: tuple[tuple[str, str, int], ...] = ()  # (case, fold, run id) that made each of them

    @property
    def foreground_labels(self) -> list[int]:
        return self.plan.foreground_labels


def _previous_stage(project: Project, spec: ExperimentSpec, plan: ConfigurationPlan, fold: str, ids: list[str]):
    """A cascade fold's input from the previous stage: the folder of its hand-over, checked to hold every case the
    fold reads; an error naming the previous stage's folds to finish otherwise."""
    previous = plan.previous_stage
    where = f"cannot train {plan.configuration!r} fold {fold} of {spec.name!r}"
    try:
        load_plan(project, spec.dataset, configuration=previous, plan=plan.plan)
    except PlanningError as error:
        raise TrainingError(f"{where}: the plan has no {previous!r} stage to cascade from ({error})") from error
    with connect(project, read_only=True) as con:
        have = next_stage_cases(con, spec.name, previous)
    missing = [case_id for case_id in ids if case_id not in have]
    if missing:
        splits = load_splits(project, spec.dataset)
        folds = sorted(f for f, split in splits.items() if set(missing) & set(split["val"]))
        raise TrainingError(
            f"{where}: {len(missing)} case(s) have no {previous} prediction yet ({', '.join(missing[:5])}); "
            f"{previous} fold(s) {', '.join(folds) or '?'} of {spec.name!r} must be trained and validated first "
            f"(voxelbase train SPEC -c {previous}; each fold's validation writes the cascade's input)"
        )
    runs = tuple(sorted((case_id, *have[case_id]) for case_id in ids))
    return next_stage_dir(project, spec.name, previous), runs


def prepare_fold(project: Project, spec: ExperimentSpec, *, configuration: str, fold: str) -> FoldSetup:
    plan = load_plan(project, spec.dataset, configuration=configuration, plan=spec.train.plan, current=True)
    try:
        train_ids, val_ids = fold_case_ids(project, spec.dataset, fold)
    except PlanningError as error:
        raise TrainingError(str(error)) from error
    previous, previous_runs = (
        _previous_stage(project, spec, plan, fold, train_ids + val_ids) if plan.previous_stage else (None, ())
    )
    stage = stage_name(plan.plan, configuration)
    try:
        train_cases = load_cases(project, spec.dataset, plan=plan.plan, configuration=configuration, case_ids=train_ids)
        val_cases = load_cases(project, spec.dataset, plan=plan.plan, configuration=configuration, case_ids=val_ids)
    except LookupError as error:
        raise TrainingError(str(error)) from error
    patch = tuple(spec.train.patch_size or plan.patch_size)
    batch_size = spec.train.batch_size or plan.batch_size
    augment: AugmentConfig = spec.augment
    dummy_2d = use_dummy_2d(patch, augment)
    common = {
        "batch_size": batch_size,
        "patch_size": patch,
        "oversample_foreground": spec.train.oversample_foreground,
        "probabilistic_oversampling": spec.train.probabilistic_oversampling,
        "num_classes": plan.label_value_count,
        "annotated_only": plan.has_ignore_label,
        "previous_stage_labels": tuple(plan.previous_stage_labels),
    }
    return FoldSetup(
        plan=plan,
        plan_name=plan.plan,
        stage=stage,
        train_cases=train_cases,
        val_cases=val_cases,
        previous_stage=previous,
        previous_stage_runs=previous_runs,
        train_settings=StreamSettings(
            **common,
            read_size=initial_patch_size(patch, augment, dummy_2d=dummy_2d),
            seed=spec.train.seed,
            augment=augment,
            dummy_2d=dummy_2d,
        ),
        val_settings=StreamSettings(**common, read_size=patch, seed=spec.train.seed + 1),
    )


def default_workers() -> int:
    """Loader threads: one per CPU, at most 4 (more starve the training step of cores)."""
    return worker_count(cap=4)

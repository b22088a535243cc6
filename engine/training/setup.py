"""Everything a fold's training needs, resolved once from the spec, the plan and the catalog.

Errors here are the user's to fix (not planned, not preprocessed, stale, unknown fold) and say what to run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from engine.errors import VoxelbaseError
from engine.planning import load_plan, load_splits
from engine.preprocessing.dataset import stage_name
from engine.project import Project
from engine.spec import ExperimentSpec
from engine.spec.model import section_dict
from engine.training.augment import AugmentConfig, initial_patch_size, use_dummy_2d
from engine.training.loader import StreamSettings
from engine.training.patches import CaseEntry, load_cases

# Train settings that choose what to run or where, not what is learned: they never invalidate a trained fold.
RUN_ONLY_KEYS = frozenset(
    {"configurations", "folds", "device", "num_workers", "pin_memory", "validate", "save_probabilities", "epochs"}
)


def training_hash(spec: ExperimentSpec) -> str:
    """What a fold's weights depend on besides the epoch count: equal hashes can resume or extend each other."""
    train = {k: v for k, v in section_dict(spec.train).items() if k not in RUN_ONLY_KEYS}
    payload = json.dumps({"dataset": spec.dataset, "train": train, "augment": spec.augment.to_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class TrainingError(VoxelbaseError, RuntimeError):
    """A training run that cannot start as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FoldSetup:
    plan: dict
    plan_name: str
    stage: str
    train_cases: list[CaseEntry]
    val_cases: list[CaseEntry]
    train_settings: StreamSettings
    val_settings: StreamSettings

    @property
    def foreground_labels(self) -> list[int]:
        return list(range(1, int(self.plan["num_classes"])))


def fold_cases(project: Project, dataset: str, fold: str) -> tuple[list[str], list[str]]:
    """(train, validation) case ids; fold 'all' trains on every labelled case and validates on them too."""
    splits = load_splits(project, dataset)
    if fold == "all":
        first = next(iter(splits.values()))
        everything = sorted(set(first["train"]) | set(first["val"]))
        return everything, everything
    if fold not in splits:
        raise TrainingError(
            f"fold {fold!r} is not among the splits of dataset {dataset!r} (folds: {', '.join(splits)})"
        )
    return splits[fold]["train"], splits[fold]["val"]


def _unsupported(plan: dict) -> str | None:
    """Plans this trainer cannot honour yet, refused up front rather than trained wrongly."""
    if plan.get("previous_stage"):
        return "the cascade (a stage trained on the previous stage's predictions)"
    labels = plan.get("labels") or {}
    if "ignore" in labels:
        return "training with an ignore label"
    if any(isinstance(v, list) for v in labels.values()):
        return "training with region labels"
    return None


def prepare_fold(project: Project, spec: ExperimentSpec, *, configuration: str, fold: str) -> FoldSetup:
    plan = load_plan(project, spec.dataset, configuration=configuration, plan=spec.train.plan, current=True)
    unsupported = _unsupported(plan)
    if unsupported:
        raise TrainingError(
            f"cannot train {configuration!r} of dataset {spec.dataset!r}: {unsupported} is not supported yet"
        )
    train_ids, val_ids = fold_cases(project, spec.dataset, fold)
    stage = stage_name(plan["plan"], configuration)
    try:
        train_cases = load_cases(
            project, spec.dataset, plan=plan["plan"], configuration=configuration, case_ids=train_ids
        )
        val_cases = load_cases(project, spec.dataset, plan=plan["plan"], configuration=configuration, case_ids=val_ids)
    except LookupError as error:
        raise TrainingError(str(error)) from error
    patch = tuple(spec.train.patch_size or plan["patch_size"])
    batch_size = spec.train.batch_size or int(plan["batch_size"])
    augment: AugmentConfig = spec.augment
    dummy_2d = use_dummy_2d(patch, augment)
    common = {
        "batch_size": batch_size,
        "patch_size": patch,
        "oversample_foreground": spec.train.oversample_foreground,
        "probabilistic_oversampling": spec.train.probabilistic_oversampling,
        "num_classes": int(plan["num_classes"]),
    }
    return FoldSetup(
        plan=plan,
        plan_name=plan["plan"],
        stage=stage,
        train_cases=train_cases,
        val_cases=val_cases,
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
    import os

    return max(1, min(4, (os.cpu_count() or 2)))

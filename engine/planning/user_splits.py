"""The user's own cross-validation splits: the `voxelbase splits` command as functions.

nnU-Net users edit `splits_final.json`; here such a file is imported (`import_splits`), or N folds are made by
nnU-Net's rule (`make_splits`: KFold over the sorted case ids, seed 12345, as `plan` does for its default 5).
Either replaces the dataset's splits in one catalog transaction after every check has passed, so refused input
leaves the old splits exactly as they were. Each training step of `voxelbase run` is keyed on a fingerprint of
its own fold's split, so a changed split puts that fold's step, and no other, out of date.

Refused, naming the fold and the case: a case that is not a case of the dataset, a test case (no label), a case
listed twice in one list or in both lists of a fold, a fold without training or validation cases; and a file
that is not a JSON list of objects with exactly 'train' and 'val' lists of case ids.

Not required, as in nnU-Net: that every labelled case be validated in some fold, or that a fold name every case.
A labelled case in no validation list is a note in the summary (cross-validation will not score it), not an error.

Fold 'all' needs none of this: it trains and validates on every labelled case (`api.fold_case_ids`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import case_splits, dataset_content_hash
from voxelbase.catalog.plans import dataset_splits, write_splits
from voxelbase.planning.api import missing_splits_message
from voxelbase.planning.presets import PlanningError
from voxelbase.planning.splits import SPLIT_SEED, default_splits
from voxelbase.project import Project

ROLES = ("train", "val")
MAX_PROBLEMS = 8  # listed in one error; a file from another dataset would otherwise list every case
FORMAT_HINT = '[{"train": ["case", ...], "val": ["case", ...]}, ...] (fold k is the k-th entry)'

Folds = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class SplitsResult:
    """A dataset's splits as they now stand, and what a change did to them."""

    dataset: str
    folds: Folds  # fold -> {'train': [...], 'val': [...]}, case ids sorted, folds in order
    n_labelled: int
    unvalidated: tuple[str, ...]  # labelled cases in no fold's validation list
    source: str = ""  # how they were made; empty when only read
    changed: tuple[str, ...] | None = None  # folds whose split changed (added, altered or removed); None if read

    def rows(self) -> list[dict[str, Any]]:
        """One row per fold, for printing."""
        return [
            {
                "fold": fold,
                "n_train": len(split["train"]),
                "n_val": len(split["val"]),
                "val_cases": ", ".join(split["val"]),
            }
            for fold, split in self.folds.items()
        ]

    def to_nnunet(self) -> list[dict[str, list[str]]]:
        """nnU-Net's `splits_final.json` content: fold k is the k-th entry."""
        return [{"train": split["train"], "val": split["val"]} for split in self.folds.values()]

    def summary(self) -> str:
        if not self.folds:
            return missing_splits_message(self.dataset, self.n_labelled)
        counted = f"{len(self.folds)} folds over {self.n_labelled} labelled cases"
        if self.changed is None:
            lines = [f"dataset {self.dataset!r}: {counted}"]
        elif self.changed:
            names = ", ".join(self.changed)
            lines = [f"dataset {self.dataset!r}: wrote {counted} ({self.source}); changed fold(s): {names}"]
        else:
            lines = [f"dataset {self.dataset!r}: splits unchanged ({counted}, {self.source})"]
        if self.unvalidated:
            shown = ", ".join(self.unvalidated[:MAX_PROBLEMS]) + (
                ", ..." if len(self.unvalidated) > MAX_PROBLEMS else ""
            )
            lines.append(
                f"note: {len(self.unvalidated)} labelled case(s) are in no validation list, so cross-validation "
                f"does not score them: {shown}"
            )
        return "\n".join(lines)


def _refuse(where: str, problems: Sequence[str]) -> PlanningError:
    listed = list(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    body = listed[0] if len(listed) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(listed)
    return PlanningError(f"{where}: {body}\n(the splits in the catalog are unchanged)")


def read_splits_file(path: Path) -> list[dict[str, list[str]]]:
    """The folds of an nnU-Net `splits_final.json`, its shape checked (not yet its cases)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PlanningError(f"{path}: cannot read the splits file ({error.strerror or error})") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanningError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            f"expected nnU-Net's splits_final.json: {FORMAT_HINT}"
        ) from error
    if not isinstance(data, list):
        raise PlanningError(f"{path}: must be a JSON list of folds, got {_kind(data)}; expected {FORMAT_HINT}")
    if not data:
        raise PlanningError(f"{path}: holds no folds (an empty list); expected {FORMAT_HINT}")
    problems = []
    for k, fold in enumerate(data):
        if not isinstance(fold, dict):
            problems.append(f"fold {k} must be an object with 'train' and 'val' lists, got {_kind(fold)}")
            continue
        missing = [role for role in ROLES if role not in fold]
        extra = sorted(str(key) for key in fold if key not in ROLES)
        if missing:
            problems.append(f"fold {k} has no {' or '.join(repr(m) for m in missing)} list")
        if extra:
            problems.append(f"fold {k} has key(s) {', '.join(repr(e) for e in extra)} besides 'train' and 'val'")
        for role in ROLES:
            if role not in fold:
                continue
            ids = fold[role]
            if not isinstance(ids, list):
                problems.append(f"fold {k}: {role!r} must be a list of case ids, got {_kind(ids)}")
                continue
            problems += [
                f"fold {k}: {role!r} entry {i} is not a case id string: {json.dumps(c)}"
                for i, c in enumerate(ids)
                if not isinstance(c, str)
            ]
    if problems:
        raise _refuse(str(path), problems)
    return [{role: list(fold[role]) for role in ROLES} for fold in data]


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def check_splits(folds: Sequence[dict[str, list[str]]], cases: dict[str, str], dataset: str) -> list[str]:
    """Every problem of `folds` against the dataset's cases (case id -> 'train' or 'test'), each naming the fold
    and the case; empty when the folds are good."""
    problems = []
    for k, fold in enumerate(folds):
        for role in ROLES:
            if not fold[role]:
                problems.append(f"fold {k} has no {'training' if role == 'train' else 'validation'} cases")
            seen: set[str] = set()
            for case_id in fold[role]:
                if case_id in seen:
                    problems.append(f"fold {k}: case {case_id!r} is listed twice in {role!r}")
                    continue
                seen.add(case_id)
                split = cases.get(case_id)
                if split is None:
                    problems.append(f"fold {k}: case {case_id!r} in {role!r} is not a case of dataset {dataset!r}")
                elif split != "train":
                    problems.append(
                        f"fold {k}: case {case_id!r} in {role!r} is a test case of dataset {dataset!r}, without a "
                        "label; only labelled training cases can be trained or validated on"
                    )
        problems += [
            f"fold {k}: case {case_id!r} is in both 'train' and 'val'"
            for case_id in sorted(set(fold["train"]) & set(fold["val"]))
        ]
    return problems


def _unvalidated(folds: Folds, labelled: Sequence[str]) -> tuple[str, ...]:
    validated = {case_id for split in folds.values() for case_id in split["val"]}
    return tuple(c for c in labelled if c not in validated)


def _changed(old: Folds, new: Folds) -> tuple[str, ...]:
    return tuple(fold for fold in {**old, **new} if old.get(fold) != new.get(fold))


def _no_dataset(dataset: str) -> PlanningError:
    return PlanningError(f"dataset {dataset!r} does not exist: voxelbase ingest SOURCE --name {dataset}")


def _replace(
    dataset: str,
    build: Callable[[list[str]], list[dict[str, list[str]]]],
    *,
    project: Project | str | None,
    where: str,
    source: str,
) -> SplitsResult:
    """Check the folds `build(labelled case ids)` gives and make them the dataset's splits, in one transaction."""
    resolved = Project.resolve(project)
    if not resolved.catalog_path.exists():
        raise _no_dataset(dataset)
    with transaction(resolved) as con:
        if dataset_content_hash(con, dataset) is None:
            raise _no_dataset(dataset)
        cases = case_splits(con, dataset)
        labelled = sorted(c for c, split in cases.items() if split == "train")
        folds = build(labelled)
        problems = check_splits(folds, cases, dataset)
        if problems:
            raise _refuse(where, problems)
        old = dataset_splits(con, dataset)
        write_splits(con, dataset, folds)
        new = dataset_splits(con, dataset)
    return SplitsResult(
        dataset=dataset,
        folds=new,
        n_labelled=len(labelled),
        unvalidated=_unvalidated(new, labelled),
        source=source,
        changed=_changed(old, new),
    )


def import_splits(dataset: str, path: str | os.PathLike, *, project: Project | str | None = None) -> SplitsResult:
    """Replace the dataset's splits with those of an nnU-Net `splits_final.json` (fold k is the k-th entry)."""
    path = Path(path)
    folds = read_splits_file(path)
    return _replace(dataset, lambda labelled: folds, project=project, where=str(path), source=f"imported from {path}")


def make_splits(dataset: str, n_folds: int, *, project: Project | str | None = None) -> SplitsResult:
    """Replace the dataset's splits with `n_folds` folds by nnU-Net's rule over its labelled cases (with 5, the
    folds `plan` writes)."""

    def build(labelled: list[str]) -> list[dict[str, list[str]]]:
        if n_folds < 2:
            raise PlanningError(
                f"cannot make {n_folds} fold(s) of dataset {dataset!r}: cross-validation needs at least 2 folds; "
                "to train on every labelled case, train fold 'all' (no splits needed)"
            )
        if n_folds > len(labelled):
            raise PlanningError(
                f"cannot make {n_folds} folds of dataset {dataset!r} from its {len(labelled)} labelled case(s): "
                f"every fold needs at least one validation case; use at most {len(labelled)} folds"
                + ("" if len(labelled) >= 2 else ", or train fold 'all'")
            )
        return default_splits(labelled, n_folds=n_folds)

    where = f"splits of dataset {dataset!r}"
    return _replace(dataset, build, project=project, where=where, source=f"nnU-Net's KFold rule, seed {SPLIT_SEED}")


def show_splits(dataset: str, *, project: Project | str | None = None) -> SplitsResult:
    """The dataset's splits as they stand (no folds when it has none)."""
    resolved = Project.resolve(project)
    if not resolved.catalog_path.exists():
        raise _no_dataset(dataset)
    with connect(resolved, read_only=True) as con:
        if dataset_content_hash(con, dataset) is None:
            raise _no_dataset(dataset)
        labelled = sorted(c for c, split in case_splits(con, dataset).items() if split == "train")
        folds = dataset_splits(con, dataset)
    return SplitsResult(dataset, folds, len(labelled), _unvalidated(folds, labelled))


def export_splits(dataset: str, path: str | os.PathLike, *, project: Project | str | None = None) -> SplitsResult:
    """Write the dataset's splits as an nnU-Net `splits_final.json` (atomically: a reader never sees half)."""
    shown = show_splits(dataset, project=project)
    if not shown.folds:
        raise PlanningError(f"nothing to export: {shown.summary()}")
    names = list(shown.folds)
    if names != [str(k) for k in range(len(names))]:
        raise PlanningError(
            f"dataset {dataset!r} has folds {', '.join(names)}; nnU-Net's format numbers folds 0..N-1 by position"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(shown.to_nnunet(), indent=4) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return shown

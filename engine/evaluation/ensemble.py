"""Ensembles of two configurations scored on cross-validation, as nnU-Net's `find_best_configuration` does it.

Each member's validation saved its class probabilities in the case's original geometry
(`runs/<exp>/<config>/fold_<k>/validation/<case>.npz`, written when `train.save_probabilities` is true). The
ensemble of a pair averages them case by case, takes the argmax and scores it against the dataset's labels with
the same `case_metrics` as everything else. The result is one `runs` row of kind 'ensemble' per fold, named
`ensemble:<a>+<b>` (`selection.ensemble_name`), with its `metrics` rows -- all written in one transaction, so
`select_best` ranks the ensemble beside the single configurations or not at all. The ensemble's segmentations
are written to its own run folders so that a postprocessing decision can be made on them like on any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import case_geometries, dataset_info, dataset_regions, fingerprint_labels
from voxelbase.catalog.plans import dataset_splits
from voxelbase.catalog.results import insert_metrics
from voxelbase.catalog.runs import ensemble_name, experiment_row, finished_folds, record_finished_run
from voxelbase.errors import VoxelbaseError
from voxelbase.evaluation.metrics import case_metrics, regions_of
from voxelbase.evaluation.selection import ensemble_candidates
from voxelbase.images import read_probabilities, write_segmentation
from voxelbase.project import Project
from voxelbase.store import read_case
from voxelbase.volumes import mean_probabilities, segmentation_from_probabilities


class EnsembleError(VoxelbaseError, ValueError):
    """An ensemble that cannot be scored; the message names the missing run, fold or file."""


@dataclass(frozen=True)
class EnsembleResult:
    experiment: str
    configuration: str  # 'ensemble:<a>+<b>'
    members: tuple[str, ...]
    run_ids: dict[str, int]  # fold -> run id
    pred_dirs: tuple[Path, ...]  # one folder of segmentations per fold
    n_cases: int
    mean_dice: float | None  # nnU-Net's score: per label mean over cases, then mean over labels


def _member_folds(con, experiment: str, members: Sequence[str]) -> list[str]:
    """The cross-validation folds every member finished; an error when the members' folds differ."""
    finished = finished_folds(con, experiment, cross_validation=True)
    folds = {member: set(finished.get(member, ())) for member in members}
    for member, present in folds.items():
        if not present:
            raise EnsembleError(f"{experiment}/{member} has no finished cross-validation fold to ensemble")
    union = set().union(*folds.values())
    for member, present in folds.items():
        if present != union:
            raise EnsembleError(
                f"{experiment}/{member} lacks fold(s) {sorted(union - present)} that the other member has; "
                "train them before ensembling"
            )
    return sorted(union, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def averaged_probabilities(paths: Sequence[Path]) -> np.ndarray:
    """The mean of the members' (K, Z, Y, X) probability files, float32, one member in memory at a time."""
    try:
        return mean_probabilities(read_probabilities(path) for path in paths)
    except ValueError as error:
        raise EnsembleError(f"{paths[0].parent}: {error}") from error


def ensemble_cross_validation(
    experiment: str, members: Sequence[str], *, project: Project | str | None = None, progress: bool = True
) -> EnsembleResult:
    """Score the ensemble of `members` (two configurations) on every cross-validation fold; record it."""
    project = Project.resolve(project)
    members = tuple(sorted(set(members)))
    name = ensemble_name(members)
    with connect(project, read_only=True) as con:
        recorded = experiment_row(con, experiment)
        if recorded is None:
            raise EnsembleError(f"experiment {experiment!r} not found in the catalog")
        dataset, spec_hash = recorded.dataset, recorded.spec_hash
        tolerance = float(recorded.spec.get("evaluate", {}).get("nsd_tolerance_mm", 1.0))
        folds = _member_folds(con, experiment, members)
        splits = dataset_splits(con, dataset)
        info = dataset_info(con, dataset)
        geometry = case_geometries(con, dataset)
        regions = dataset_regions(con, dataset)
        regions_class_order = fingerprint_labels(con, dataset)[1] if regions else None
    ending, ignore_label = info.file_ending, info.ignore_label
    cases = {}
    for fold in folds:
        cases[fold] = splits.get(fold, {}).get("val", [])
        if not cases[fold]:
            raise EnsembleError(f"dataset {dataset!r} has no validation cases for fold {fold}")
    files = {}
    for fold, ids in cases.items():
        for case_id in ids:
            for member in members:
                path = project.run_dir(experiment, member, fold) / "validation" / f"{case_id}.npz"
                if not path.is_file():
                    raise EnsembleError(
                        f"{path}: validation probabilities missing; ensembles need train.save_probabilities = true "
                        f"when {experiment}/{member} validates (retrain or re-validate fold {fold} with it)"
                    )
                files.setdefault((fold, case_id), []).append(path)

    scored: dict[str, list] = {fold: [] for fold in folds}
    total = sum(len(ids) for ids in cases.values())
    bar = tqdm(total=total, desc=f"ensemble {name}", unit="case", disable=None if progress else True)
    for fold, ids in cases.items():
        out_dir = project.run_dir(experiment, name, fold) / "validation"
        for case_id in ids:
            probabilities = averaged_probabilities(files[(fold, case_id)])
            # per-region sigmoid maps (a region dataset) average like class probabilities, then take nnU-Net's
            # region -> label map conversion
            segmentation = segmentation_from_probabilities(probabilities, regions_class_order=regions_class_order)
            labels = regions_of(regions) if regions else list(range(1, probabilities.shape[0]))
            del probabilities
            _, reference = read_case(project, dataset, case_id)
            if reference is None:
                raise EnsembleError(f"validation case {case_id!r} of dataset {dataset!r} has no stored label")
            if reference.shape != segmentation.shape:
                raise EnsembleError(
                    f"{files[(fold, case_id)][0]}: probabilities of shape {segmentation.shape} do not match case "
                    f"{case_id!r}'s label {reference.shape}"
                )
            ignore = None if ignore_label is None else reference == ignore_label
            rows = case_metrics(
                segmentation,
                reference,
                labels=labels,
                spacing=geometry[case_id].spacing,
                nsd_tolerance_mm=tolerance,
                ignore_mask=ignore,
            )
            write_segmentation(segmentation, out_dir / f"{case_id}{ending}", geometry=geometry[case_id])
            scored[fold].append((case_id, rows))
            bar.update()
    bar.close()

    run_ids = {}
    with transaction(project) as con:
        for fold in folds:
            run_ids[fold] = record_finished_run(
                con,
                experiment=experiment,
                configuration=name,
                fold=fold,
                kind="ensemble",
                run_dir=str(project.run_dir(experiment, name, fold)),
                spec_hash=spec_hash,
            )
            insert_metrics(con, run_id=run_ids[fold], cases=scored[fold], nsd_tolerance_mm=tolerance)
    return EnsembleResult(
        experiment=experiment,
        configuration=name,
        members=members,
        run_ids=run_ids,
        pred_dirs=tuple(project.run_dir(experiment, name, fold) / "validation" for fold in folds),
        n_cases=total,
        mean_dice=_mean_dice(rows for fold_rows in scored.values() for _, rows in fold_rows),
    )


def _mean_dice(case_rows) -> float | None:
    per_label: dict[int, list[float]] = {}
    for rows in case_rows:
        for row in rows:
            if row["dice"] is not None:
                per_label.setdefault(row["label"], []).append(row["dice"])
    means = [float(np.mean(v)) for v in per_label.values() if v]
    return float(np.mean(means)) if means else None


def ensemble_all(experiment: str, *, project: Project | str | None = None) -> list[EnsembleResult]:
    """Score every pair `selection.ensemble_candidates` proposes (configurations with every trained fold)."""
    return [
        ensemble_cross_validation(experiment, pair, project=project)
        for pair in ensemble_candidates(experiment, project=project)
    ]

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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.catalog import connect, transaction
from engine.errors import VoxelbaseError
from engine.evaluation.metrics import case_metrics
from engine.evaluation.records import insert_metrics
from engine.evaluation.selection import ensemble_candidates, ensemble_name
from engine.inference.export import geometry_of, read_probabilities, write_segmentation
from engine.project import Project
from engine.store import read_case


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


def _experiment(con, experiment: str) -> tuple[str, str, float]:
    row = con.execute("SELECT dataset, spec, spec_hash FROM experiments WHERE name = ?", [experiment]).fetchone()
    if row is None:
        raise EnsembleError(f"experiment {experiment!r} not found in the catalog")
    tolerance = json.loads(row[1]).get("evaluate", {}).get("nsd_tolerance_mm", 1.0)
    return row[0], row[2], float(tolerance)


def _member_folds(con, experiment: str, members: Sequence[str]) -> list[str]:
    """The cross-validation folds every member finished; an error when the members' folds differ."""
    folds = {}
    for member in members:
        rows = con.execute(
            "SELECT fold FROM result_runs WHERE experiment = ? AND configuration = ? AND kind = 'train' "
            "AND fold <> 'all'",
            [experiment, member],
        ).fetchall()
        folds[member] = {r[0] for r in rows}
        if not folds[member]:
            raise EnsembleError(f"{experiment}/{member} has no finished cross-validation fold to ensemble")
    union = set().union(*folds.values())
    for member, present in folds.items():
        if present != union:
            raise EnsembleError(
                f"{experiment}/{member} lacks fold(s) {sorted(union - present)} that the other member has; "
                "train them before ensembling"
            )
    return sorted(union, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def _validation_cases(con, dataset: str, fold: str) -> list[str]:
    rows = con.execute(
        "SELECT case_id FROM splits WHERE dataset = ? AND fold = ? AND role = 'val' ORDER BY case_id", [dataset, fold]
    ).fetchall()
    if not rows:
        raise EnsembleError(f"dataset {dataset!r} has no validation cases for fold {fold}")
    return [r[0] for r in rows]


def averaged_probabilities(paths: Sequence[Path]) -> np.ndarray:
    """The mean of the members' (K, Z, Y, X) probability files, float32, one member in memory at a time."""
    total = None
    for path in paths:
        probabilities = read_probabilities(path)
        if total is not None and probabilities.shape != total.shape:
            raise EnsembleError(f"{path}: probabilities of shape {probabilities.shape}, expected {total.shape}")
        total = probabilities if total is None else np.add(total, probabilities, out=total)
    return total / len(paths)


def ensemble_cross_validation(
    experiment: str, members: Sequence[str], *, project: Project | str | None = None, progress: bool = True
) -> EnsembleResult:
    """Score the ensemble of `members` (two configurations) on every cross-validation fold; record it."""
    project = Project.resolve(project)
    members = tuple(sorted(set(members)))
    name = ensemble_name(members)
    with connect(project, read_only=True) as con:
        dataset, spec_hash, tolerance = _experiment(con, experiment)
        folds = _member_folds(con, experiment, members)
        cases = {fold: _validation_cases(con, dataset, fold) for fold in folds}
        ending, ignore_label = con.execute(
            "SELECT file_ending, ignore_label FROM datasets WHERE name = ?", [dataset]
        ).fetchone()
        geometry = {
            r[0]: geometry_of({"spacing": r[1], "origin": r[2], "direction": r[3]})
            for r in con.execute(
                "SELECT case_id, spacing, origin, direction FROM cases WHERE dataset = ?", [dataset]
            ).fetchall()
        }
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
            segmentation = probabilities.argmax(0).astype(np.uint8 if probabilities.shape[0] <= 255 else np.uint16)
            labels = list(range(1, probabilities.shape[0]))
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
            run_dir = project.run_dir(experiment, name, fold)
            run_ids[fold] = con.execute(
                "INSERT INTO runs (experiment, configuration, fold, kind, status, spec_hash, run_dir, finished_at) "
                "VALUES (?, ?, ?, 'ensemble', 'finished', ?, ?, current_timestamp) RETURNING run_id",
                [experiment, name, fold, spec_hash, str(run_dir)],
            ).fetchone()[0]
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

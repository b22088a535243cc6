"""End-of-fold validation, as nnU-Net does it, in two steps that each record what they were made with.

1. Predict: sliding-window prediction of each validation case with the fold's final checkpoint, resampled back and
   uncropped to the case's original geometry, saved to `runs/<exp>/<config>/fold_<k>/validation/` (segmentations,
   and class probabilities when `train.save_probabilities`). Depends on `prediction_settings`.
2. Score: the saved segmentations against the original labels, into `metrics` under the training run's id.
   Depends on `scoring_settings`.

The run records the hash of each (`runs.validation_hash`, `runs.scoring_hash`), so `validate_fold` redoes only what
a settings change made stale: new prediction settings re-predict and re-score a trained fold without retraining it;
new evaluation settings re-score its saved segmentations without predicting again. New segmentations clear the
run's metrics in the same transaction, so a stale score is never read as current. `voxelbase run` keys its
validate and score steps on the same two functions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import case_geometries, dataset_info
from voxelbase.catalog.next_stage import next_stage_cases
from voxelbase.catalog.preprocessed import case_properties, preprocessed_shapes
from voxelbase.catalog.results import clear_metrics, insert_metrics
from voxelbase.catalog.runs import latest_training_run, record_scoring, record_validation, validation_keys
from voxelbase.errors import VoxelbaseError
from voxelbase.evaluation.metrics import case_metrics, regions_of
from voxelbase.images import ImageFileError, read_image, write_probabilities, write_segmentation
from voxelbase.inference.probabilities import predict_probabilities
from voxelbase.networks import load_trained_model, trained_plan
from voxelbase.plan import CASCADE_STAGES
from voxelbase.planning import fold_case_ids, load_plan
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec
from voxelbase.store import read_case, stage_name
from voxelbase.volumes import probabilities_to_segmentation, revert_probabilities
from voxelbase.volumes.next_stage import (
    read_next_stage,
    segmentation_for_next_stage,
    with_previous_stage,
    write_next_stage,
)

CHECKPOINT = "checkpoint_final.pt"
NO_SIMPLEITK_SUFFIX = ".segmentation.npz"  # where a machine without SimpleITK keeps a validation segmentation


class ValidationError(VoxelbaseError, RuntimeError):
    """A fold that cannot be validated; the message says what is missing."""


def prediction_settings(spec: ExperimentSpec) -> dict:
    """What the validation segmentations (and probabilities) of a trained fold depend on, besides its weights."""
    p = spec.predict
    return {
        "tta": p.tta,
        "mirror_axes": list(spec.augment.mirror_axes) if p.tta else None,
        "step_size": p.step_size,
        "use_gaussian": p.use_gaussian,
        "gaussian_sigma_scale": p.gaussian_sigma_scale if p.use_gaussian else None,
        "save_probabilities": spec.train.save_probabilities,
    }


def scoring_settings(spec: ExperimentSpec) -> dict:
    """What the metrics of saved segmentations depend on."""
    return {"nsd_tolerance_mm": spec.evaluate.nsd_tolerance_mm}


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def validate_fold(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    run_id: int,
    device: torch.device,
    progress: bool = True,
) -> str:
    """Bring a trained fold's validation up to date with the spec: predict (and score) when the prediction settings
    changed, only score when only the evaluation settings did. Returns what was done."""
    predicted = ensure_predicted(
        project, spec, configuration=configuration, fold=fold, run_id=run_id, device=device, progress=progress
    )
    scored = ensure_scored(project, spec, configuration=configuration, fold=fold, run_id=run_id)
    return {(True, True): "predicted and scored", (False, True): "scored"}.get((predicted, scored), "up to date")


def _recorded(project: Project, run_id: int):
    """The settings hashes the run's validation was predicted and scored with."""
    with connect(project, read_only=True) as con:
        return validation_keys(con, run_id)


def ensure_predicted(
    project: Project, spec: ExperimentSpec, *, configuration: str, fold: str, run_id: int, device, progress=True
) -> bool:
    """Predict the validation cases unless they were predicted with these settings (and, for a stage with a
    cascade after it, handed over: its next stage may have been preprocessed since); whether it predicted."""
    if _recorded(project, run_id).validation_hash == settings_hash(
        prediction_settings(spec)
    ) and not _hand_over_missing(project, spec, configuration=configuration, fold=fold):
        return False
    predict_validation(
        project, spec, configuration=configuration, fold=fold, run_id=run_id, device=device, progress=progress
    )
    return True


def _hand_over_missing(project: Project, spec: ExperimentSpec, *, configuration: str, fold: str) -> bool:
    """A previous stage's fold whose held-out cases lack their (now possible) hand-over to the next stage."""
    if fold == "all" or configuration not in CASCADE_STAGES.values():
        return False  # (cheap checks first: reading the plan loads the checkpoint)
    plan = trained_plan(project.run_dir(spec.name, configuration, fold) / CHECKPOINT)
    if not plan.next_stage:
        return False
    with connect(project, read_only=True) as con:
        have = next_stage_cases(con, spec.name, configuration)
        ready = preprocessed_shapes(con, spec.dataset, plan=plan.plan, configuration=plan.next_stage)
    return any(c in ready and c not in have for c in _validation_cases(project, spec.dataset, fold))


def ensure_scored(project: Project, spec: ExperimentSpec, *, configuration: str, fold: str, run_id: int) -> bool:
    """Score the saved segmentations unless they were scored with these settings; whether it scored."""
    if _recorded(project, run_id).scoring_hash == settings_hash(scoring_settings(spec)):
        return False
    score_validation(project, spec, configuration=configuration, fold=fold, run_id=run_id)
    return True


def trained_run_id(project: Project, experiment: str, *, configuration: str, fold: str) -> int:
    """The fold's finished training run, whose validation this is; an error when it has none."""
    with connect(project, read_only=True) as con:
        run = latest_training_run(con, experiment=experiment, configuration=configuration, fold=fold)
    if run is None or run.status != "finished":
        state = "never ran" if run is None else f"its last run is {run.status}"
        raise ValidationError(f"{experiment}/{configuration}/fold_{fold} is not trained ({state}): train it first")
    return run.run_id


def _validation_cases(project: Project, dataset: str, fold: str) -> list[str]:
    return fold_case_ids(project, dataset, fold)[1]


def predict_validation(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    run_id: int,
    device: torch.device,
    progress: bool = True,
) -> None:
    """Predict the fold's validation cases with its final checkpoint and save them in the original geometry."""
    run_dir = project.run_dir(spec.name, configuration, fold)
    model = load_trained_model(run_dir / CHECKPOINT, device=device)
    plan, dataset = model.plan, spec.dataset
    ids = _validation_cases(project, dataset, fold)
    with connect(project, read_only=True) as con:
        geometry = case_geometries(con, dataset, ids)
        ending = dataset_info(con, dataset).file_ending
        properties = {
            case_id: case_properties(con, dataset, case_id, plan=plan.plan, configuration=plan.configuration)
            for case_id in ids
        }
    missing = [case_id for case_id, found in properties.items() if found is None]
    if missing:
        raise ValidationError(
            f"validation case(s) {', '.join(missing[:5])} of {dataset!r} are not preprocessed for "
            f"{plan.plan}/{plan.configuration}: voxelbase preprocess {dataset} --configuration {plan.configuration}"
        )
    out_dir = run_dir / "validation"
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = stage_name(plan.plan, plan.configuration)
    # held-out cases only: fold "all" saw every case, so its predictions are no cascade input (nnU-Net's CV rule)
    hand_over = (
        _NextStage(project, spec, plan, fold=fold, run_id=run_id, geometry=geometry)
        if plan.next_stage and fold != "all"
        else None
    )
    for case_id in tqdm(ids, desc="validation", unit="case", disable=None if progress else True):
        image, _ = read_case(project, dataset, case_id, stage=stage)
        if plan.previous_stage:
            image = with_previous_stage(image, _previous_stage_of(project, spec, plan, case_id), plan)
        probabilities = predict_probabilities(
            [model.network], image, plan=plan, spec=spec, device=device, tta=spec.predict.tta
        )
        if hand_over is not None:
            hand_over.add(case_id, probabilities)
        segmentation = probabilities_to_segmentation(probabilities, properties=properties[case_id], plan=plan)
        if spec.train.save_probabilities:
            reverted = revert_probabilities(probabilities, properties=properties[case_id], plan=plan)
            write_probabilities(reverted, out_dir / f"{case_id}.npz")
        try:
            write_segmentation(segmentation, out_dir / f"{case_id}{ending}", geometry=geometry[case_id])
        except ImportError:  # machines without SimpleITK keep the arrays only
            np.savez_compressed(out_dir / f"{case_id}{NO_SIMPLEITK_SUFFIX}", segmentation=segmentation)
    with transaction(project) as con:
        clear_metrics(con, run_id)
        record_validation(con, run_id, validation_hash=settings_hash(prediction_settings(spec)))
        if hand_over is not None:
            hand_over.record(con)


def _previous_stage_of(project: Project, spec: ExperimentSpec, plan, case_id: str) -> np.ndarray:
    found = read_next_stage(project, spec.name, plan.previous_stage, case_id)
    if found is None:
        raise ValidationError(
            f"{spec.name}/{plan.configuration}: case {case_id!r} has no {plan.previous_stage} prediction to cascade "
            f"from: train and validate every {plan.previous_stage} fold of {spec.name!r} first"
        )
    return found


class _NextStage:
    """A low-res fold's hand-over to the cascade: each validation case's segmentation at the next stage's
    preprocessed shape (`voxelbase.volumes.next_stage`), written as the cases are predicted and recorded with the
    validation. Cases the next stage has not preprocessed are skipped (and named)."""

    def __init__(self, project: Project, spec: ExperimentSpec, plan, *, fold: str, run_id: int, geometry) -> None:
        self.project, self.spec, self.plan, self.fold, self.run_id = project, spec, plan, fold, run_id
        self.geometry = geometry
        self.next_plan = load_plan(project, spec.dataset, configuration=plan.next_stage, plan=plan.plan)
        with connect(project, read_only=True) as con:  # every case's target shape, in one query
            self.shapes = preprocessed_shapes(con, spec.dataset, plan=plan.plan, configuration=plan.next_stage)
        self.pending: list[tuple[str, np.ndarray]] = []

    def add(self, case_id: str, probabilities: np.ndarray) -> None:
        if case_id not in self.shapes:
            tqdm.write(
                f"{self.plan.next_stage} has not preprocessed {case_id!r}: no cascade input written for it "
                f"(voxelbase preprocess {self.spec.dataset} -c {self.plan.next_stage}, then validate again)"
            )
            return
        segmentation = segmentation_for_next_stage(
            probabilities,
            plan=self.plan,
            next_plan=self.next_plan,
            case_spacing=self.geometry[case_id].spacing,
            shape=self.shapes[case_id],
        )
        self.pending.append((case_id, segmentation))

    def record(self, con) -> None:
        for case_id, segmentation in self.pending:
            write_next_stage(
                con,
                self.project,
                experiment=self.spec.name,
                plan=self.plan,
                case_id=case_id,
                fold=self.fold,
                run_id=self.run_id,
                segmentation=segmentation,
            )


def _saved_segmentation(out_dir: Path, case_id: str, ending: str) -> np.ndarray:
    path = out_dir / f"{case_id}{ending}"
    if path.is_file():
        try:
            return read_image(path)[0]
        except ImportError:
            pass  # no SimpleITK here: the arrays are beside it when they were saved without it too
        except ImageFileError as error:
            raise ValidationError(str(error)) from error
    arrays = out_dir / f"{case_id}{NO_SIMPLEITK_SUFFIX}"
    if not arrays.is_file():
        raise ValidationError(f"{path}: validation segmentation missing; validate the fold again")
    with np.load(arrays) as data:
        return data["segmentation"]


def score_validation(project: Project, spec: ExperimentSpec, *, configuration: str, fold: str, run_id: int) -> int:
    """Score the fold's saved validation segmentations against the stored labels; returns the metric rows."""
    out_dir = project.run_dir(spec.name, configuration, fold) / "validation"
    plan = trained_plan(out_dir.parent / CHECKPOINT)
    # a region plan is scored per region; ignored voxels (the ignore label in the reference) are left out
    labels = regions_of(plan.regions) if plan.has_regions else plan.foreground_labels
    dataset = spec.dataset
    ids = _validation_cases(project, dataset, fold)
    with connect(project, read_only=True) as con:
        geometry = case_geometries(con, dataset, ids)
        ending = dataset_info(con, dataset).file_ending
    tolerance = spec.evaluate.nsd_tolerance_mm
    scored = []
    for case_id in ids:
        segmentation = _saved_segmentation(out_dir, case_id, ending)
        _, reference = read_case(project, dataset, case_id)
        rows = case_metrics(
            segmentation,
            reference,
            labels=labels,
            spacing=geometry[case_id].spacing,
            nsd_tolerance_mm=tolerance,
            ignore_mask=None if plan.ignore_label is None else reference == plan.ignore_label,
        )
        scored.append((case_id, rows))
    with transaction(project) as con:
        clear_metrics(con, run_id)
        written = insert_metrics(con, run_id=run_id, cases=scored, nsd_tolerance_mm=tolerance)
        record_scoring(con, run_id, scoring_hash=settings_hash(scoring_settings(spec)))
    return written

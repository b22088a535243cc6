"""End-of-fold validation, as nnU-Net does it: sliding-window prediction of each validation case, resampled
back and uncropped to the case's original geometry, saved, and scored against the original labels.

It reads only what training left behind: the fold's final checkpoint (network, plan and spec inside), the
preprocessed cases in the store and the catalog's splits and geometry. The per-case metrics go to `metrics`
under the training run's id, in one transaction, replacing what an earlier validation of the run wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.catalog import connect, transaction
from engine.catalog.datasets import case_geometries, dataset_info
from engine.catalog.preprocessed import case_properties
from engine.catalog.results import insert_metrics
from engine.errors import VoxelbaseError
from engine.evaluation.metrics import case_metrics
from engine.images import write_probabilities, write_segmentation
from engine.inference.probabilities import predict_probabilities
from engine.networks import load_trained_model
from engine.planning import fold_case_ids
from engine.project import Project
from engine.spec import ExperimentSpec
from engine.store import read_case, stage_name
from engine.volumes import probabilities_to_segmentation, revert_probabilities

CHECKPOINT = "checkpoint_final.pt"


class ValidationError(VoxelbaseError, RuntimeError):
    """A fold that cannot be validated; the message says what is missing."""


def validate_fold(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    run_id: int,
    device: torch.device,
    progress: bool = True,
) -> int:
    """Predict and score the fold's validation cases with its final checkpoint; returns the metric rows written."""
    run_dir = project.run_dir(spec.name, configuration, fold)
    model = load_trained_model(run_dir / CHECKPOINT, device=device)
    plan, dataset = model.plan, spec.dataset
    _, ids = fold_case_ids(project, dataset, fold)
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
    scored = []
    stage = stage_name(plan.plan, plan.configuration)
    for case_id in tqdm(ids, desc="validation", unit="case", disable=None if progress else True):
        image, _ = read_case(project, dataset, case_id, stage=stage)
        probabilities = predict_probabilities(
            [model.network], image, plan=plan, spec=spec, device=device, tta=spec.predict.tta
        )
        segmentation = probabilities_to_segmentation(probabilities, properties=properties[case_id], plan=plan)
        if spec.train.save_probabilities:
            reverted = revert_probabilities(probabilities, properties=properties[case_id], plan=plan)
            write_probabilities(reverted, out_dir / f"{case_id}.npz")
        _, reference = read_case(project, dataset, case_id)
        _save_segmentation(segmentation, out_dir, case_id=case_id, ending=ending, geometry=geometry[case_id])
        rows = case_metrics(
            segmentation,
            reference,
            labels=plan.foreground_labels,
            spacing=geometry[case_id].spacing,
            nsd_tolerance_mm=spec.evaluate.nsd_tolerance_mm,
        )
        scored.append((case_id, rows))
    with transaction(project) as con:
        return insert_metrics(con, run_id=run_id, cases=scored, nsd_tolerance_mm=spec.evaluate.nsd_tolerance_mm)


def _save_segmentation(segmentation: np.ndarray, out_dir: Path, *, case_id: str, ending: str, geometry) -> None:
    try:
        write_segmentation(segmentation, out_dir / f"{case_id}{ending}", geometry=geometry)
    except ImportError:  # machines without SimpleITK keep the arrays only
        np.savez_compressed(out_dir / f"{case_id}.segmentation.npz", segmentation=segmentation)

"""`voxelbase predict`: segment new images with a trained experiment, written with their own geometry.

One case at a time, as nnU-Net's predictor does it: read the channel files, preprocess with the plan saved in the
checkpoints (crop to nonzero, normalize, resample), sliding-window inference (Gaussian-weighted windows at step
0.5, several per forward pass, mirroring test-time augmentation) averaged over the folds' softmax outputs,
resampled back one class at a time and uncropped, the recorded postprocessing applied, and written as
`<case><ending>` in the input's own format with exactly its size, spacing, origin and direction.

An ensemble ('ensemble:<a>+<b>', the recorded choice or asked for) averages its members' probabilities after
each is reverted to the original geometry, since the members were trained at different spacings. Memory holds one
case: its image, the network outputs at plan spacing and (for ensembles or saved probabilities) one class map
stack at the original size; a plain prediction keeps only a running maximum per voxel while reverting.

A model imported from nnU-Net (`voxelbase import-nnunet`) is predicted with nnU-Net's own arithmetic instead
(`voxelbase.inference.nnunet_window`: float16 sliding window, folds' logits averaged, logits resampled back, then the
softmax), so it writes what `nnUNetv2_predict` writes.

Files are written under a temporary name and renamed, segmentation last, so an interrupted or failed case never
leaves a file that looks complete.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voxelbase.catalog import connect
from voxelbase.catalog.datasets import channel_names, training_spacing_range
from voxelbase.images import TWO_D_SPACING, Geometry, write_probabilities, write_segmentation
from voxelbase.inference.bundle import load_bundle_models
from voxelbase.inference.inputs import (
    InputCase,
    PredictionError,
    PredictionWarning,
    check_output_dir,
    list_input_cases,
    read_input_case,
)
from voxelbase.inference.models import ConfigurationModels, PredictionModels, load_models
from voxelbase.inference.probabilities import predict_probabilities, predicts_logits, revert_logits
from voxelbase.parallel import completed, resolve_scheduler
from voxelbase.preprocessing import preprocess_case
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec
from voxelbase.volumes import (
    apply_postprocessing,
    mean_probabilities,
    probabilities_to_segmentation,
    revert_probabilities,
    segmentation_from_probabilities,
)
from voxelbase.volumes.next_stage import segmentation_for_next_stage, with_previous_stage

SPACING_WARN_FACTOR = 2.0  # warn when an axis' spacing is beyond half the smallest / twice the largest trained

__all__ = ["PredictionError", "PredictionWarning", "predict"]


def predict(
    experiment: str | None = None,
    *,
    model: str | os.PathLike | None = None,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    project: Project | str | None = None,
    configuration: str | None = None,
    folds: Sequence[int | str] | None = None,
    tta: bool | None = None,
    batch_windows: int | None = None,
    device: str | None = None,
    save_probabilities: bool = False,
    progress: bool = True,
    scheduler: str | None = None,
) -> list[Path]:
    """Segment every case in `input_dir` (imagesTs layout) into `output_dir`; returns the written segmentations.

    The models are an `experiment` of the project, or a `model` bundle (`voxelbase export`), which needs no
    project: it carries the channel names and training spacing range the catalog would give.

    `configuration` None uses the experiment's recorded selection (a configuration or an ensemble), else its only
    trained configuration. `folds` None uses every finished cross-validation fold (fold 'all' when there are
    none). `tta`, `batch_windows` and `device` default to the experiment spec's `[predict]` section.
    `save_probabilities` also writes `<case>.npz` (float16 class probabilities in the original geometry).
    With a Dask `scheduler` (default `$VOXELBASE_SCHEDULER`; see `voxelbase.parallel`) every case is a task: each
    worker loads the networks once, from the checkpoints or the bundle (so it needs them at the same paths), and
    writes its cases; nothing here opens the catalog on a worker.
    """
    if (experiment is None) == (model is None):
        both = "not both" if model is not None else "one is needed"
        raise PredictionError(f"give an experiment or a model bundle to predict with ({both})")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_output_dir(input_dir, output_dir)
    if batch_windows is not None and batch_windows < 1:
        raise PredictionError(f"batch_windows must be at least 1, got {batch_windows}")
    if model is not None:
        bundle = load_bundle_models(model, configuration=configuration, folds=folds, device=device)
        models, names, spacing_range = bundle.models, bundle.channel_names, bundle.spacing_range
    else:
        project = Project.resolve(project)
        models = load_models(experiment, project=project, configuration=configuration, folds=folds, device=device)
        with connect(project, read_only=True) as con:
            names = channel_names(con, models.dataset)
            spacing_range = training_spacing_range(con, models.dataset)
    names = names if len(names) == models.n_channels else None
    cases = list_input_cases(input_dir, n_channels=models.n_channels, channel_names=names)
    spec = _prediction_spec(models.spec, tta=tta, batch_windows=batch_windows)
    output_dir.mkdir(parents=True, exist_ok=True)

    scheduler = resolve_scheduler(scheduler)
    if scheduler is not None:
        source = _ModelSource(
            models=_without_networks(models) if model is None else None,
            bundle=None if model is None else (str(model), configuration, folds, device),
        )
        predictor = _CasePredictor(source, spec, output_dir, spacing_range, save_probabilities)
        return _predict_on_dask(predictor, cases, scheduler=scheduler, choice=models.choice, progress=progress)

    written = []
    bar = tqdm(cases, desc=f"predict {models.choice}", unit="case", disable=None if progress else True)
    for case in bar:
        bar.set_postfix_str(case.case_id)
        written.append(
            _predict_case(
                case, models, spec=spec, output_dir=output_dir, spacing_range=spacing_range, save=save_probabilities
            )
        )
    bar.close()
    return written


@dataclasses.dataclass(frozen=True)
class _ModelSource:
    """What a Dask worker loads the networks from: the experiment's models without their networks (they are
    loaded again from their checkpoints), or a bundle's (path, configuration, folds, device)."""

    models: PredictionModels | None
    bundle: tuple | None
    key: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # one prediction command's models


def _without_networks(models: PredictionModels) -> PredictionModels:
    return dataclasses.replace(models, members=tuple(m.without_networks() for m in models.members))


_worker_models: dict[str, PredictionModels] = {}  # per worker process: loaded once, for every case


def _load_source(source: _ModelSource) -> PredictionModels:
    if source.key not in _worker_models:
        if source.bundle is not None:
            path, configuration, folds, device = source.bundle
            loaded = load_bundle_models(path, configuration=configuration, folds=folds, device=device).models
        else:
            models = source.models
            members = tuple(m.with_networks(models.device) for m in models.members)
            loaded = dataclasses.replace(models, members=members)
        _worker_models.clear()  # one experiment's networks at a time
        _worker_models[source.key] = loaded
    return _worker_models[source.key]


@dataclasses.dataclass(frozen=True)
class _CasePredictor:
    """One case's prediction as a picklable task for a Dask worker."""

    source: _ModelSource
    spec: ExperimentSpec
    output_dir: Path
    spacing_range: object
    save: bool

    def __call__(self, case: InputCase) -> Path:
        return _predict_case(
            case,
            _load_source(self.source),
            spec=self.spec,
            output_dir=self.output_dir,
            spacing_range=self.spacing_range,
            save=self.save,
        )


def _predict_on_dask(
    predictor: _CasePredictor, cases: list[InputCase], *, scheduler: str, choice: str, progress: bool
) -> list[Path]:
    """Every case as a Dask task; the written segmentations in the input order."""
    written: dict[str, Path] = {}
    bar = tqdm(total=len(cases), desc=f"predict {choice} on dask", unit="case", disable=None if progress else True)
    for case, result in completed(predictor, cases, workers=1, scheduler=scheduler):
        written[case.case_id] = result()
        bar.update()
    bar.close()
    return [written[case.case_id] for case in cases]


def _prediction_spec(spec: ExperimentSpec, *, tta: bool | None, batch_windows: int | None) -> ExperimentSpec:
    changes = {}
    if tta is not None:
        changes["tta"] = bool(tta)
    if batch_windows is not None:
        changes["batch_windows"] = int(batch_windows)
    return dataclasses.replace(spec, predict=dataclasses.replace(spec.predict, **changes)) if changes else spec


def check_spacing(case_id: str, spacing: Sequence[float], spacing_range) -> None:
    """Warn when the spacing is far outside the training cases' range: the network will see structures at a
    scale it never saw (after resampling, a 5 mm slice case is blurred or a 0.2 mm case is decimated)."""
    if spacing_range is None:
        return
    low, high = spacing_range
    axes = "zyx"
    outside = [
        f"{axes[i]} {s:.3g} mm (trained {lo:.3g}-{hi:.3g})"
        for i, (s, lo, hi) in enumerate(zip(spacing, low, high, strict=True))
        if s != TWO_D_SPACING and (s < lo / SPACING_WARN_FACTOR or s > hi * SPACING_WARN_FACTOR)
    ]
    if outside:
        warnings.warn(
            f"case {case_id!r}: spacing far outside the training cases' range: {', '.join(outside)}; "
            "the segmentation may be poor",
            PredictionWarning,
            stacklevel=3,
        )


def member_probabilities(member: ConfigurationModels, image: np.ndarray, *, geometry: Geometry, spec, device):
    """(probabilities at plan spacing averaged over the member's folds, preprocessing properties). A cascade stage
    first predicts its previous stage (same folds) and takes that segmentation, at its own spacing, as input."""
    data, _, properties = preprocess_case(image, spacing=geometry.spacing, plan=member.plan)
    if member.previous is not None:
        earlier, _ = member_probabilities(member.previous, image, geometry=geometry, spec=spec, device=device)
        segmentation = segmentation_for_next_stage(
            earlier,
            plan=member.previous.plan,
            next_plan=member.plan,
            case_spacing=geometry.spacing,
            shape=data.shape[1:],
        )
        data = with_previous_stage(data, segmentation, member.plan)
    probabilities = predict_probabilities(
        list(member.networks), data, plan=member.plan, spec=spec, device=device, tta=spec.predict.tta
    )
    return probabilities, properties


def _regions_class_order(models: PredictionModels) -> tuple[int, ...] | None:
    """The members' regions_class_order when they predict per-region sigmoid maps (members agree on it)."""
    plan = models.members[0].plan
    return plan.regions_class_order if plan.has_regions else None


def _predict_case(
    case: InputCase,
    models: PredictionModels,
    *,
    spec: ExperimentSpec,
    output_dir: Path,
    spacing_range,
    save: bool,
) -> Path:
    image, geometry = read_input_case(case)
    check_spacing(case.case_id, geometry.spacing, spacing_range)
    device = models.device
    if len(models.members) == 1 and not save and not predicts_logits(models.members[0].plan):
        member = models.members[0]
        probabilities, properties = member_probabilities(member, image, geometry=geometry, spec=spec, device=device)
        del image
        segmentation = probabilities_to_segmentation(probabilities, properties=properties, plan=member.plan)
    else:

        def reverted(member: ConfigurationModels) -> np.ndarray:
            probabilities, properties = member_probabilities(member, image, geometry=geometry, spec=spec, device=device)
            revert = revert_logits if predicts_logits(member.plan) else revert_probabilities
            return revert(probabilities, properties=properties, plan=member.plan)

        total = mean_probabilities(reverted(member) for member in models.members)
        del image
        segmentation = segmentation_from_probabilities(total, regions_class_order=_regions_class_order(models))
        if save:
            write_probabilities(total, output_dir / f"{case.case_id}.npz")
        del total
    segmentation = apply_postprocessing(segmentation, models.postprocessing)
    return write_segmentation(segmentation, output_dir / case.output_name, geometry=geometry)

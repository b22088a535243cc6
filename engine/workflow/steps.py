"""The steps of a declared experiment, each declaring what it reads; order and keys are derived from that.

ingest -> plan -> preprocess:<c> -> train:<c>:<f> -> validate:<c>:<f> -> score:<c>:<f> -> postprocess:<c>
       -> ensemble:<a>+<b> -> select

A step states the settings it depends on (a function of the spec, owned by the stage that does the work, so the
stage records with its results exactly what `run` decides on), the steps whose results it uses (`after`), the data
it reads (catalog fingerprints, read when the step is considered, after the steps before it ran: a re-ingest that
changes nothing downstream re-runs nothing downstream) and the stages that perform it. `voxelbase.workflow.keys`
turns that into the step's key and `voxelbase.workflow.run` into the order and the dry-run reasons.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voxelbase.device import resolve_device
from voxelbase.evaluation import postprocessing, selection
from voxelbase.evaluation.ensemble import ensemble_cross_validation
from voxelbase.evaluation.validation import (
    ensure_predicted,
    ensure_scored,
    prediction_settings,
    scoring_settings,
    trained_run_id,
)
from voxelbase.ingest import ingest_dataset
from voxelbase.plan import CASCADE_STAGES
from voxelbase.planning import plan_dataset
from voxelbase.planning.presets import get_preset, plan_name
from voxelbase.preprocessing.dataset import preprocess_dataset
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec
from voxelbase.spec.model import section_dict
from voxelbase.training.setup import training_settings
from voxelbase.training.trainer import train_fold


def _nothing(spec: ExperimentSpec) -> None:
    return None


@dataclass(frozen=True)
class Step:
    name: str
    action: Callable[[], str]  # does the work; returns a one-line summary
    settings: Callable[[ExperimentSpec], object] = _nothing  # the spec settings its result depends on
    after: tuple[str, ...] = ()  # steps that must be done first
    data: tuple[tuple[str, ...], ...] = ()  # data fingerprints it reads (see keys.data_fingerprint)
    uses_results: bool = False  # whether the `after` steps' own results are inputs (no data fingerprint covers them)
    stages: tuple[str, ...] = ()  # the stages whose code performs it


def experiment_plan_name(spec: ExperimentSpec) -> str:
    return spec.train.plan or plan_name(get_preset(spec.plan.preset), spec.plan.gpu_memory_gb)


def pinned(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec with its plan named, as every training step sees it (a new default plan never retrains silently)."""
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, plan=experiment_plan_name(spec)))


def _ingest_settings(spec: ExperimentSpec) -> dict:
    """The resolved source folder: the same folder written relative or absolute is the same input."""
    return {"source": str(spec.ingest_source().resolve())}


def declare_steps(project: Project, spec: ExperimentSpec) -> list[Step]:
    """Every step of the experiment, with what it reads; `run` orders them by `after`."""
    spec = pinned(spec)
    dataset, plan = spec.dataset, spec.train.plan
    folds = [str(f) for f in spec.train.folds]
    # postprocessing, ensembles and selection are decided on held-out cases: numbered folds only (fold "all"
    # validates on its own training cases, as nnU-Net's does, and is never used to choose)
    cross_validation = [f for f in folds if f != "all"]
    decide = spec.train.validate and bool(cross_validation)
    configurations = list(spec.train.configurations)
    steps: list[Step] = []
    if spec.ingest is not None:
        steps.append(
            Step(
                "ingest",
                lambda: ingest_dataset(
                    spec.ingest_source(), name=dataset, project=project, workers=spec.preprocess.workers, replace=True
                ).summary(),
                settings=_ingest_settings,
                data=(("source",),),
                stages=("ingest",),
            )
        )
    steps.append(
        Step(
            "plan",
            lambda: (
                f"plan {plan_dataset(dataset, project=project, preset=spec.plan.preset, gpu_memory_gb=spec.plan.gpu_memory_gb).plan!r}"
            ),
            settings=lambda s: section_dict(s.plan),
            after=("ingest",) if spec.ingest is not None else (),
            data=(("dataset",),),
            stages=("planning",),
        )
    )
    for c in configurations:
        steps.append(
            Step(
                f"preprocess:{c}",
                lambda c=c: preprocess_dataset(
                    dataset, configuration=c, plan=plan, workers=spec.preprocess.workers, project=project
                ).summary(),
                after=("plan",),
                data=(("dataset",), ("plan", c)),
                stages=("preprocessing",),
            )
        )
        previous = CASCADE_STAGES.get(c)
        # a cascade fold reads every case's hand-over from the previous stage: after all its folds' validations
        cascade_after = tuple(f"validate:{previous}:{f}" for f in cross_validation) if previous else ()
        cascade_data = (("next_stage", previous),) if previous else ()
        # a previous stage's validation writes the hand-over at the next stage's preprocessed shape
        hands_over = tuple(f"preprocess:{n}" for n, p in CASCADE_STAGES.items() if p == c and n in configurations)
        for fold in folds:
            steps.append(
                Step(
                    f"train:{c}:{fold}",
                    lambda c=c, fold=fold: _train(project, spec, c, fold),
                    settings=training_settings,
                    after=(f"preprocess:{c}", *cascade_after),
                    data=(("plan", c), ("preprocessed", c), ("splits", fold), *cascade_data),
                    stages=("training",),
                )
            )
            if not spec.train.validate:
                continue
            steps.append(
                Step(
                    f"validate:{c}:{fold}",
                    lambda c=c, fold=fold: _validate(project, spec, c, fold),
                    settings=prediction_settings,
                    after=(f"train:{c}:{fold}", *hands_over),
                    uses_results=True,
                    stages=("inference", "evaluation"),
                )
            )
            steps.append(
                Step(
                    f"score:{c}:{fold}",
                    lambda c=c, fold=fold: _score(project, spec, c, fold),
                    settings=scoring_settings,
                    after=(f"validate:{c}:{fold}",),
                    uses_results=True,
                    stages=("evaluation",),
                )
            )
        if decide:
            steps.append(
                Step(
                    f"postprocess:{c}",
                    lambda c=c: _postprocess(project, spec, c),
                    after=tuple(f"validate:{c}:{f}" for f in cross_validation),  # on segmentations: Dice only
                    uses_results=True,
                    stages=("evaluation",),
                )
            )
    if decide and spec.train.save_probabilities and len(configurations) > 1:
        for a, b in itertools.combinations(sorted(configurations), 2):
            steps.append(
                Step(
                    f"ensemble:{a}+{b}",
                    lambda a=a, b=b: _ensemble(project, spec, (a, b)),
                    settings=scoring_settings,
                    after=tuple(f"validate:{x}:{f}" for x in (a, b) for f in cross_validation),
                    uses_results=True,
                    stages=("evaluation",),
                )
            )
    if decide:
        steps.append(
            Step(
                "select",
                lambda: _select(project, spec.name),
                after=tuple(s.name for s in steps if s.name.startswith(("score:", "postprocess:", "ensemble:"))),
                uses_results=True,
                stages=("evaluation",),
            )
        )
    return steps


def _train(project: Project, spec: ExperimentSpec, configuration: str, fold: str) -> str:
    result = train_fold(project, spec, configuration=configuration, fold=fold)
    verb = "already trained" if result.status == "skipped" else f"trained {result.epochs} epochs"
    return f"{verb} (run {result.run_id})"


def _validate(project: Project, spec: ExperimentSpec, configuration: str, fold: str) -> str:
    run_id = trained_run_id(project, spec.name, configuration=configuration, fold=fold)
    device = resolve_device(spec.train.device)
    done = ensure_predicted(project, spec, configuration=configuration, fold=fold, run_id=run_id, device=device)
    return f"{'predicted' if done else 'already predicted'} the validation cases of run {run_id}"


def _score(project: Project, spec: ExperimentSpec, configuration: str, fold: str) -> str:
    run_id = trained_run_id(project, spec.name, configuration=configuration, fold=fold)
    done = ensure_scored(project, spec, configuration=configuration, fold=fold, run_id=run_id)
    return f"{'scored' if done else 'already scored'} the validation of run {run_id}"


def _postprocess(project: Project, spec: ExperimentSpec, configuration: str, folders: list[Path] | None = None) -> str:
    """nnU-Net's postprocessing decision on the cross-validation predictions of a configuration (or ensemble)."""
    if folders is None:
        folders = [
            project.run_dir(spec.name, configuration, str(f)) / "validation"
            for f in spec.train.folds
            if str(f) != "all"
        ]
    decision = postprocessing.determine_postprocessing(
        spec.name, configuration, pred_dirs=folders, dataset=spec.dataset, project=project
    )
    kept = ["largest foreground component"] if decision.get("foreground_lcc") else []
    kept += [f"largest component of label {v}" for v in decision.get("per_label_lcc", [])]
    kept += [f"largest component of region {v}" for v in decision.get("per_region_lcc", [])]
    return "postprocessing: " + (", ".join(kept) if kept else "none helps")


def _ensemble(project: Project, spec: ExperimentSpec, members: tuple[str, str]) -> str:
    """Score the ensemble on cross-validation, then decide its postprocessing as for a configuration."""
    result = ensemble_cross_validation(spec.name, members, project=project)
    decided = _postprocess(project, spec, result.configuration, list(result.pred_dirs))
    dice = "n/a" if result.mean_dice is None else f"{result.mean_dice:.4f}"
    return f"{result.configuration}: cross-validation mean foreground Dice {dice}; {decided}"


def _select(project: Project, experiment: str) -> str:
    chosen = selection.select_best(experiment, project=project)
    return f"selected {chosen.choice} (cross-validation mean foreground Dice {chosen.mean_dice:.4f})"

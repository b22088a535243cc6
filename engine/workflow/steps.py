"""The steps of a declared experiment, in order, each with its key and its action.

ingest -> plan -> preprocess:<c> -> train:<c>:<fold> -> postprocess:<c> -> ensemble:<a>+<b> -> select
A step's inputs are read when it is considered, after the steps before it ran, so a re-ingest that changes
nothing downstream re-runs nothing downstream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.planning.presets import get_preset, plan_name
from engine.project import Project
from engine.spec import ExperimentSpec
from engine.spec.model import section_dict
from engine.training.setup import RUN_ONLY_KEYS
from engine.workflow import keys


@dataclass(frozen=True)
class Step:
    name: str
    spec_hash: str
    code_hash: str
    inputs: Callable[[], str]  # fingerprint of the inputs, read when the step is considered
    action: Callable[[], str]  # does the work; returns a one-line summary
    after: tuple[str, ...] = ()  # steps whose running makes this one stale


def experiment_plan_name(spec: ExperimentSpec) -> str:
    return spec.train.plan or plan_name(get_preset(spec.plan.preset), spec.plan.gpu_memory_gb)


def _train_spec_hash(spec: ExperimentSpec) -> str:
    train = {k: v for k, v in section_dict(spec.train).items() if k not in RUN_ONLY_KEYS - {"epochs"}}
    return keys.digest(
        {
            "train": train,
            "augment": spec.augment.to_dict(),
            "predict": section_dict(spec.predict),
            "evaluate": section_dict(spec.evaluate),
        }
    )


def build_steps(project: Project, spec: ExperimentSpec) -> list[Step]:
    from engine.ingest import ingest_dataset
    from engine.planning import plan_dataset
    from engine.preprocessing.dataset import preprocess_dataset

    dataset, name = spec.dataset, spec.name
    plan = experiment_plan_name(spec)
    steps: list[Step] = []
    if spec.ingest is not None:
        source = spec.ingest_source()
        steps.append(
            Step(
                "ingest",
                spec.section_hash("ingest"),
                keys.code_hash("ingest", "store"),
                lambda: keys.source_fingerprint(source),
                lambda: ingest_dataset(
                    source, name=dataset, project=project, workers=spec.preprocess.workers, replace=True
                ).summary(),
            )
        )
    steps.append(
        Step(
            "plan",
            spec.section_hash("plan"),
            keys.code_hash("planning"),
            lambda: keys.dataset_fingerprint(project, dataset),
            lambda: (
                f"plan {plan_dataset(dataset, project=project, preset=spec.plan.preset, gpu_memory_gb=spec.plan.gpu_memory_gb).plan!r}"
            ),
            after=("ingest",),
        )
    )
    train_hash = _train_spec_hash(spec)
    for configuration in spec.train.configurations:
        steps.append(
            Step(
                f"preprocess:{configuration}",
                spec.section_hash("preprocess"),
                keys.code_hash("preprocessing", "store"),
                lambda c=configuration: keys.digest(
                    [keys.dataset_fingerprint(project, dataset), keys.plan_fingerprint(project, dataset, plan, c)]
                ),
                lambda c=configuration: preprocess_dataset(
                    dataset, configuration=c, plan=plan, workers=spec.preprocess.workers, project=project
                ).summary(),
                after=("plan",),
            )
        )
        for fold in (str(f) for f in spec.train.folds):
            steps.append(
                Step(
                    f"train:{configuration}:{fold}",
                    train_hash,
                    keys.code_hash("training", "inference", "evaluation"),
                    lambda c=configuration, f=fold: keys.digest(
                        [
                            keys.plan_fingerprint(project, dataset, plan, c),
                            keys.preprocessed_fingerprint(project, dataset, plan, c),
                            keys.splits_fingerprint(project, dataset, f),
                        ]
                    ),
                    lambda c=configuration, f=fold: _train(project, spec, c, f, plan),
                    after=(f"preprocess:{configuration}",),
                )
            )
        steps.append(
            Step(
                f"postprocess:{configuration}",
                train_hash,
                keys.code_hash("evaluation"),
                lambda c=configuration: keys.step_rows_fingerprint(project, name, f"train:{c}:"),
                lambda c=configuration: _postprocess(project, spec, c),
                after=tuple(f"train:{configuration}:{f}" for f in spec.train.folds),
            )
        )
    if spec.train.save_probabilities and len(spec.train.configurations) > 1:
        for a, b in itertools.combinations(sorted(spec.train.configurations), 2):
            steps.append(
                Step(
                    f"ensemble:{a}+{b}",
                    train_hash,
                    keys.code_hash("evaluation"),
                    lambda a=a, b=b: keys.digest(
                        [keys.step_rows_fingerprint(project, name, f"train:{x}:") for x in (a, b)]
                    ),
                    lambda a=a, b=b: _ensemble(project, spec, (a, b)),
                    after=tuple(f"train:{x}:{f}" for x in (a, b) for f in spec.train.folds),
                )
            )
    steps.append(
        Step(
            "select",
            train_hash,
            keys.code_hash("evaluation"),
            lambda: keys.step_rows_fingerprint(project, name, "train:", "postprocess:", "ensemble:"),
            lambda: _select(project, name),
            after=tuple(s.name for s in steps if s.name.startswith(("postprocess:", "ensemble:"))),
        )
    )
    return steps


def _train(project: Project, spec: ExperimentSpec, configuration: str, fold: str, plan: str) -> str:
    import dataclasses

    from engine.training.trainer import train_fold

    pinned = dataclasses.replace(spec, train=dataclasses.replace(spec.train, plan=plan))
    result = train_fold(project, pinned, configuration=configuration, fold=fold)
    verb = "already trained" if result.status == "skipped" else f"trained {result.epochs} epochs"
    return f"{verb} (run {result.run_id})"


def _postprocess(project: Project, spec: ExperimentSpec, configuration: str, folders: list[Path] | None = None) -> str:
    """nnU-Net's postprocessing decision on the cross-validation predictions of a configuration (or ensemble)."""
    from engine.evaluation import postprocessing

    if folders is None:
        folders = [project.run_dir(spec.name, configuration, str(f)) / "validation" for f in spec.train.folds]
    decision = postprocessing.determine_postprocessing(
        spec.name, configuration, pred_dirs=folders, dataset=spec.dataset, project=project
    )
    kept = ["largest foreground component"] if decision.get("foreground_lcc") else []
    kept += [f"largest component of label {v}" for v in decision.get("per_label_lcc", [])]
    return "postprocessing: " + (", ".join(kept) if kept else "none helps")


def _ensemble(project: Project, spec: ExperimentSpec, members: tuple[str, str]) -> str:
    """Score the ensemble on cross-validation, then decide its postprocessing as for a configuration."""
    from engine.evaluation.ensemble import ensemble_cross_validation

    result = ensemble_cross_validation(spec.name, members, project=project)
    decided = _postprocess(project, spec, result.configuration, list(result.pred_dirs))
    dice = "n/a" if result.mean_dice is None else f"{result.mean_dice:.4f}"
    return f"{result.configuration}: cross-validation mean foreground Dice {dice}; {decided}"


def _select(project: Project, experiment: str) -> str:
    from engine.evaluation import selection

    chosen = selection.select_best(experiment, project=project)
    return f"selected {chosen.choice} (cross-validation mean foreground Dice {chosen.mean_dice:.4f})"

"""Which trained models a prediction uses: the experiment, its configuration (or ensemble), folds and checkpoints.

Everything comes from the catalog (`experiments`, the finished runs of `result_runs`, `selections`,
`postprocessing`) and the run folders; the plan of each configuration is the one saved inside its checkpoints, so
prediction preprocesses exactly as the networks were trained, whatever was planned since. Missing pieces are
errors that name what exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from voxelbase.catalog import connect
from voxelbase.catalog.results import postprocessing_decision, selection
from voxelbase.catalog.runs import ensemble_members, ensemble_name, experiment_names, experiment_row, finished_folds
from voxelbase.device import resolve_device
from voxelbase.inference.inputs import PredictionError
from voxelbase.networks import load_trained_model
from voxelbase.plan import ConfigurationPlan
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec, spec_from_dict

CHECKPOINT = "checkpoint_final.pt"


@dataclass(frozen=True)
class ConfigurationModels:
    """One configuration's trained folds, loaded: averaged into one probability map per case."""

    configuration: str
    folds: tuple[str, ...]
    plan: ConfigurationPlan
    networks: tuple[torch.nn.Module, ...]
    previous: ConfigurationModels | None = None  # a cascade stage: the stage whose segmentation it takes as input
    checkpoints: tuple[Path, ...] = ()  # where the networks came from: other processes load them from there

    def without_networks(self) -> ConfigurationModels:
        """This configuration for another process (a Dask worker), which loads the networks again itself."""
        previous = self.previous.without_networks() if self.previous is not None else None
        return dataclasses.replace(self, networks=(), previous=previous)

    def with_networks(self, device: torch.device) -> ConfigurationModels:
        """The networks loaded again from `checkpoints` (what `without_networks` left out)."""
        previous = self.previous.with_networks(device) if self.previous is not None else None
        networks = tuple(load_trained_model(path, device=device).network for path in self.checkpoints)
        return dataclasses.replace(self, networks=networks, previous=previous)


@dataclass(frozen=True)
class PredictionModels:
    experiment: str
    dataset: str
    spec: ExperimentSpec
    choice: str  # a configuration or 'ensemble:<a>+<b>'
    members: tuple[ConfigurationModels, ...]
    postprocessing: dict | None
    device: torch.device

    @property
    def n_channels(self) -> int:
        return self.members[0].plan.n_channels


def experiment_spec(project: Project, name: str) -> tuple[str, ExperimentSpec]:
    """(dataset, resolved spec) of a recorded experiment; an error listing the experiments there are."""
    with connect(project, read_only=True) as con:
        found = experiment_row(con, name)
        names = experiment_names(con)
    if found is None:
        known = ", ".join(names) if names else "none yet (train one with voxelbase train SPEC)"
        raise PredictionError(f"experiment {name!r} not found in {project.catalog_path}; experiments: {known}")
    return found.dataset, spec_from_dict(found.spec, source=f"experiment {name!r}")


def trained_folds(project: Project, experiment: str) -> dict[str, list[str]]:
    """configuration -> folds with a finished training run and a final checkpoint on disk."""
    with connect(project, read_only=True) as con:
        finished = finished_folds(con, experiment)
    found = {
        configuration: [f for f in folds if (project.run_dir(experiment, configuration, f) / CHECKPOINT).is_file()]
        for configuration, folds in finished.items()
    }
    return {c: folds for c, folds in found.items() if folds}


def _describe(trained: dict[str, list[str]]) -> str:
    if not trained:
        return "no configuration has a finished fold yet"
    return "; ".join(f"{c}: folds {', '.join(f)}" for c, f in trained.items())


def choose_configuration(
    project: Project, experiment: str, configuration: str | None, trained: dict[str, list[str]]
) -> tuple[str, tuple[str, ...]]:
    """(choice, member configurations): the one asked for, else the recorded selection, else the only one."""
    if configuration is not None:
        members = ensemble_members(configuration)
        choice = ensemble_name(members) if len(members) > 1 else configuration
    else:
        with connect(project, read_only=True) as con:
            chosen = selection(con, experiment)
        if chosen is not None:
            choice, members = chosen.choice, tuple(chosen.members)
        elif len(trained) == 1:
            choice = next(iter(trained))
            members = (choice,)
        elif not trained:
            raise PredictionError(f"experiment {experiment!r} has no finished training run to predict with")
        else:
            raise PredictionError(
                f"experiment {experiment!r} has several trained configurations ({', '.join(trained)}) and no "
                "recorded best one: pass --configuration C (or 'ensemble:A+B'), or select the best first"
            )
    for member in members:
        if member not in trained:
            raise PredictionError(
                f"configuration {member!r} of experiment {experiment!r} has no finished fold ({_describe(trained)})"
            )
    return choice, members


def choose_folds(experiment: str, configuration: str, folds, trained: dict[str, list[str]]) -> tuple[str, ...]:
    """The folds asked for (each must be trained), else every cross-validation fold (fold 'all' when none)."""
    available = trained[configuration]
    if folds is None:
        cross_validation = [f for f in available if f != "all"]
        return tuple(cross_validation or available)
    chosen = tuple(dict.fromkeys(str(f) for f in folds))
    if not chosen:
        raise PredictionError("no folds given")
    missing = [f for f in chosen if f not in available]
    if missing:
        raise PredictionError(
            f"fold(s) {', '.join(missing)} of {experiment}/{configuration} not trained (finished folds: "
            f"{', '.join(available)}; checkpoints are {CHECKPOINT} in runs/{experiment}/{configuration}/fold_<k>)"
        )
    return chosen


def _check_plans_agree(configuration: str, folds: tuple[str, ...], plans: list[ConfigurationPlan]) -> None:
    for fold, plan in zip(folds[1:], plans[1:], strict=True):
        difference = plans[0].preprocessing_agrees(plan)
        if difference:
            raise PredictionError(
                f"{configuration}: fold {fold} was trained with a different plan than fold {folds[0]} "
                f"({difference}); predict with --folds of one plan"
            )


def _configuration_models(
    project: Project, experiment: str, name: str, folds: tuple[str, ...], trained: dict[str, list[str]], device
) -> ConfigurationModels:
    """One configuration's folds, loaded; a cascade stage with its previous stage's same folds (nnU-Net predicts the
    low-res stage with the folds it predicts the cascade with)."""
    models = [load_trained_model(project.run_dir(experiment, name, f) / CHECKPOINT, device=device) for f in folds]
    _check_plans_agree(name, folds, [m.plan for m in models])
    plan = models[0].plan
    previous = None
    if plan.previous_stage:
        missing = [f for f in folds if f not in trained.get(plan.previous_stage, [])]
        if missing:
            raise PredictionError(
                f"{experiment}/{name} cascades from {plan.previous_stage}, whose fold(s) {', '.join(missing)} are not "
                f"trained ({_describe(trained)})"
            )
        previous = _configuration_models(project, experiment, plan.previous_stage, folds, trained, device)
    checkpoints = tuple(project.run_dir(experiment, name, f) / CHECKPOINT for f in folds)
    return ConfigurationModels(name, folds, plan, tuple(m.network for m in models), previous, checkpoints)


def load_models(
    experiment: str,
    *,
    project: Project,
    configuration: str | None,
    folds,
    device: str | None,
) -> PredictionModels:
    """Resolve and load everything a prediction needs (networks on `device`, default the spec's
    `predict.device`, in eval mode)."""
    dataset, spec = experiment_spec(project, experiment)
    device = resolve_device(device or spec.predict.device)
    trained = trained_folds(project, experiment)
    choice, member_names = choose_configuration(project, experiment, configuration, trained)
    members = [
        _configuration_models(
            project, experiment, name, choose_folds(experiment, name, folds, trained), trained, device
        )
        for name in member_names
    ]
    n_classes = {m.plan.num_classes for m in members}
    n_channels = {m.plan.n_channels for m in members}
    if len(n_classes) > 1 or len(n_channels) > 1:
        raise PredictionError(f"{choice}: its configurations disagree on channels or classes; cannot ensemble them")
    with connect(project, read_only=True) as con:
        decision = postprocessing_decision(con, experiment=experiment, configuration=choice)
    return PredictionModels(experiment, dataset, spec, choice, tuple(members), decision, device)

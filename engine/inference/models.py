"""Which trained models a prediction uses: the experiment, its configuration (or ensemble), folds and checkpoints.

Everything comes from the catalog (`experiments`, the finished runs of `result_runs`, `selections`,
`postprocessing`) and the run folders; the plan of each configuration is the one saved inside its checkpoints, so
prediction preprocesses exactly as the networks were trained, whatever was planned since. Missing pieces are
errors that name what exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from engine.catalog import connect
from engine.evaluation.postprocessing import load_postprocessing
from engine.evaluation.selection import ensemble_members, ensemble_name, load_selection
from engine.inference.inputs import PredictionError
from engine.project import Project
from engine.spec import ExperimentSpec, spec_from_dict

CHECKPOINT = "checkpoint_final.pt"
# plan keys that decide preprocessing and the output classes: folds averaged together must agree on them
PLAN_KEYS_THAT_MUST_AGREE = ("spacing", "normalization", "resampling", "n_channels", "num_classes", "labels")


@dataclass(frozen=True)
class ConfigurationModels:
    """One configuration's trained folds, loaded: averaged into one probability map per case."""

    configuration: str
    folds: tuple[str, ...]
    plan: dict
    networks: tuple[torch.nn.Module, ...]


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
        return int(self.members[0].plan["n_channels"])


def _fold_key(fold: str) -> tuple:
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def experiment_spec(project: Project, experiment: str) -> tuple[str, ExperimentSpec]:
    """(dataset, resolved spec) of a recorded experiment; an error listing the experiments there are."""
    with connect(project, read_only=True) as con:
        row = con.execute("SELECT dataset, spec FROM experiments WHERE name = ?", [experiment]).fetchone()
        names = [r[0] for r in con.execute("SELECT name FROM experiments ORDER BY name").fetchall()]
    if row is None:
        known = ", ".join(names) if names else "none yet (train one with voxelbase train SPEC)"
        raise PredictionError(f"experiment {experiment!r} not found in {project.catalog_path}; experiments: {known}")
    return row[0], spec_from_dict(json.loads(row[1]), source=f"experiment {experiment!r}")


def trained_folds(project: Project, experiment: str) -> dict[str, list[str]]:
    """configuration -> folds with a finished training run and a final checkpoint on disk."""
    with connect(project, read_only=True) as con:
        rows = con.execute(
            "SELECT configuration, fold FROM result_runs WHERE experiment = ? AND kind = 'train'", [experiment]
        ).fetchall()
    found: dict[str, list[str]] = {}
    for configuration, fold in rows:
        if (project.run_dir(experiment, configuration, fold) / CHECKPOINT).is_file():
            found.setdefault(configuration, []).append(fold)
    return {c: sorted(folds, key=_fold_key) for c, folds in sorted(found.items())}


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
        selection = load_selection(experiment, project=project)
        if selection is not None:
            choice, members = selection.choice, tuple(selection.members)
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


def _check_plans_agree(configuration: str, folds: tuple[str, ...], plans: list[dict]) -> None:
    first = plans[0]
    for fold, plan in zip(folds[1:], plans[1:], strict=True):
        for key in PLAN_KEYS_THAT_MUST_AGREE:
            if plan.get(key) != first.get(key):
                raise PredictionError(
                    f"{configuration}: fold {fold} was trained with a different plan than fold {folds[0]} "
                    f"({key}: {plan.get(key)!r} vs {first.get(key)!r}); predict with --folds of one plan"
                )


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
    from engine.device import resolve_device
    from engine.training.validation import load_network

    dataset, spec = experiment_spec(project, experiment)
    device = resolve_device(device or spec.predict.device)
    trained = trained_folds(project, experiment)
    choice, member_names = choose_configuration(project, experiment, configuration, trained)
    members = []
    for name in member_names:
        chosen = choose_folds(experiment, name, folds, trained)
        networks, plans = [], []
        for fold in chosen:
            network, state = load_network(project.run_dir(experiment, name, fold) / CHECKPOINT, device=device)
            networks.append(network)
            plans.append(state["plan"])
        _check_plans_agree(name, chosen, plans)
        members.append(ConfigurationModels(name, chosen, plans[0], tuple(networks)))
    n_classes = {int(m.plan["num_classes"]) for m in members}
    n_channels = {int(m.plan["n_channels"]) for m in members}
    if len(n_classes) > 1 or len(n_channels) > 1:
        raise PredictionError(f"{choice}: its configurations disagree on channels or classes; cannot ensemble them")
    with connect(project, read_only=True) as con:
        decision = load_postprocessing(con, experiment=experiment, configuration=choice)
    return PredictionModels(experiment, dataset, spec, choice, tuple(members), decision, device)


def training_spacing_range(project: Project, dataset: str) -> tuple[list[float], list[float]] | None:
    """Per-axis (min, max) spacing of the dataset's training cases, or None when the catalog has none."""
    with connect(project, read_only=True) as con:
        row = con.execute(
            "SELECT [min(spacing[1]), min(spacing[2]), min(spacing[3])], "
            "[max(spacing[1]), max(spacing[2]), max(spacing[3])] FROM cases WHERE dataset = ? AND split = 'train'",
            [dataset],
        ).fetchone()
    if row is None or row[0] is None or row[0][0] is None:
        return None
    return list(row[0]), list(row[1])

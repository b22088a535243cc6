"""`voxelbase train`: every requested configuration and fold of an experiment spec."""

from __future__ import annotations

import os
from collections.abc import Iterable

from engine.project import Project
from engine.spec import ExperimentSpec, load_spec
from engine.training.trainer import FoldResult, train_fold


def requested_folds(spec: ExperimentSpec, fold: str | None) -> list[str]:
    return [fold] if fold is not None else [str(f) for f in spec.train.folds]


def train(
    spec: ExperimentSpec | str | os.PathLike,
    *,
    project: Project | str | None = None,
    configuration: str | None = None,
    fold: str | None = None,
    overrides: Iterable[str] = (),
    device: str | None = None,
    resume: bool = False,
) -> list[FoldResult]:
    """Train the spec's configurations x folds (or the one asked for); finished folds are skipped."""
    project = Project.resolve(project)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides=overrides)
    configurations = [configuration] if configuration else list(spec.train.configurations)
    results = []
    for config in configurations:
        for k in requested_folds(spec, fold):
            results.append(train_fold(project, spec, configuration=config, fold=k, device=device, resume=resume))
    return results

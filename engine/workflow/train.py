"""`voxelbase train`: every requested configuration and fold of an experiment spec, each trained (training) and
then validated (evaluation) -- the two stages meet here, above both."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Iterator

from voxelbase.device import resolve_device
from voxelbase.evaluation.validation import validate_fold
from voxelbase.project import Project
from voxelbase.spec import ExperimentSpec, load_spec
from voxelbase.training.trainer import FoldResult, train_fold


def requested_folds(spec: ExperimentSpec, fold: str | None) -> list[str]:
    return [fold] if fold is not None else [str(f) for f in spec.train.folds]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM (a scheduler stopping the job) ends training like Ctrl-C: the run is recorded as `interrupted`
    instead of being left `running`, and `--resume` continues it. Only the main thread may set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    """Train and validate the spec's configurations x folds (or the one asked for); finished folds are skipped."""
    project = Project.resolve(project)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides=overrides)
    configurations = [configuration] if configuration else list(spec.train.configurations)
    results = []
    with sigterm_as_interrupt():
        for config in configurations:
            for k in requested_folds(spec, fold):
                results.append(
                    train_and_validate(project, spec, configuration=config, fold=k, device=device, resume=resume)
                )
    return results


def train_and_validate(
    project: Project, spec: ExperimentSpec, *, configuration: str, fold: str, device: str | None = None, resume=False
) -> FoldResult:
    """Train one fold, then (with `train.validate`) bring its validation up to date.

    Training is skipped when the fold is trained with these settings (`training.setup.training_settings`);
    validation is redone only as far as its settings changed (`evaluation.validation`): a new prediction setting
    re-predicts without retraining, a new evaluation setting re-scores without predicting.
    """
    result = train_fold(project, spec, configuration=configuration, fold=fold, device=device, resume=resume)
    if spec.train.validate:
        validate_fold(
            project,
            spec,
            configuration=configuration,
            fold=fold,
            run_id=result.run_id,
            device=resolve_device(device or spec.train.device),
        )
    return result

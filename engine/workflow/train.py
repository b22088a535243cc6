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
from voxelbase.training import records
from voxelbase.training.distributed import launch, ranks_from_environment
from voxelbase.training.setup import TrainingError
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
    world_size: int = 1,
) -> list[FoldResult]:
    """Train and validate the spec's configurations x folds (or the one asked for); finished folds are skipped.

    `world_size` > 1 trains each fold on that many local DDP ranks (torch's elastic launcher, one GPU per rank on
    CUDA, gloo on the CPU); the same call under `torchrun` trains as the rank torchrun made this process."""
    if world_size < 1:
        raise TrainingError(f"--world-size must be at least 1, got {world_size}")
    if world_size > 1 and ranks_from_environment().distributed:
        raise TrainingError("--world-size starts its own ranks: leave it out when running under torchrun")
    project = Project.resolve(project)
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides=overrides)
    configurations = [configuration] if configuration else list(spec.train.configurations)
    results = []
    with sigterm_as_interrupt():
        for config in configurations:
            for k in requested_folds(spec, fold):
                results.append(
                    train_and_validate(
                        project, spec, configuration=config, fold=k, device=device, resume=resume, world_size=world_size
                    )
                )
    return results


def train_and_validate(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    device: str | None = None,
    resume=False,
    world_size: int = 1,
) -> FoldResult:
    """Train one fold, then (with `train.validate`) bring its validation up to date.

    Training is skipped when the fold is trained with these settings (`training.setup.training_settings`);
    validation is redone only as far as its settings changed (`evaluation.validation`): a new prediction setting
    re-predicts without retraining, a new evaluation setting re-scores without predicting.
    """
    if world_size > 1:
        result = train_on_ranks(
            project, spec, configuration=configuration, fold=fold, device=device, resume=resume, world_size=world_size
        )
    else:
        result = train_fold(project, spec, configuration=configuration, fold=fold, device=device, resume=resume)
        if not ranks_from_environment().main:
            return result  # under torchrun: rank 0 validates
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


def _train_rank(root, spec: ExperimentSpec, configuration: str, fold: str, device: str | None, resume: bool):
    """One rank of `train_on_ranks`, in its own process."""
    with sigterm_as_interrupt():
        return train_fold(Project(root), spec, configuration=configuration, fold=fold, device=device, resume=resume)


def train_on_ranks(
    project: Project,
    spec: ExperimentSpec,
    *,
    configuration: str,
    fold: str,
    device: str | None,
    resume: bool,
    world_size: int,
) -> FoldResult:
    """Train one fold on `world_size` local ranks; a rank that stops ends the run as `interrupted`, to be resumed
    with `--resume` at any world size."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        return launch(world_size, _train_rank, project.root, spec, configuration, fold, device, resume)
    except ChildFailedError as error:
        # a rank 0 that was killed could not record the outcome: its run is found dead and marked here
        run = records.latest_run(project, experiment=spec.name, configuration=configuration, fold=fold)
        stopped = ", ".join(
            f"rank {rank} ({failure.message or f'exit code {failure.exitcode}'})"
            for rank, failure in sorted(error.failures.items())
        )
        status = run.status if run is not None else "not started"
        raise TrainingError(
            f"{spec.name}/{configuration}/fold_{fold} on {world_size} ranks stopped: {stopped}; the run is {status}"
            + ("; continue it with --resume (any --world-size)" if status == "interrupted" else "")
        ) from None

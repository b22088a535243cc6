"""Per-case work in spawned worker processes, or on a Dask cluster: the one loop and the one default worker count.

Workers are spawned (not forked) so they start clean of the parent's threads, torch state and open catalog
connections; they never write the catalog, they hand results back to the main process.

With a `scheduler` the same tasks run as Dask `distributed` tasks instead: `local:N` starts a `LocalCluster` of N
single-threaded worker processes for the duration of the loop, anything else is a scheduler address
(`tcp://host:8786`) of a running cluster. Only this process (the client) writes the catalog, as with the pool. A
task whose worker dies is resubmitted by Dask (`retries`); the per-case steps write under a temporary name and
rename when complete, so a killed attempt leaves nothing half-written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, TypeVar
from uuid import uuid4

from voxelbase.errors import VoxelbaseError

Task = TypeVar("Task")
Result = TypeVar("Result")


def worker_count(requested: int | None = None, *, tasks: int | None = None, cap: int | None = None) -> int:
    """`requested` workers, else one per CPU (at most `cap`); never more than there are tasks, never fewer than 1."""
    count = requested or min(os.cpu_count() or 1, cap or os.cpu_count() or 1)
    if tasks is not None:
        count = min(count, tasks)
    return max(1, count)


SCHEDULER_ENV = "VOXELBASE_SCHEDULER"  # the default for every command, as `--scheduler` sets it
TASK_RETRIES = 2  # a task whose Dask worker died is run again this many times


class SchedulerError(VoxelbaseError, RuntimeError):
    """A Dask scheduler that cannot be used; the message says which and why."""


def resolve_scheduler(scheduler: str | None) -> str | None:
    """The scheduler asked for, else `$VOXELBASE_SCHEDULER`, else None (the local process pool)."""
    chosen = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if chosen is not None and chosen.startswith("local:"):
        count = chosen.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise SchedulerError(f"scheduler {chosen!r}: write local:N with N >= 1 workers, e.g. local:2")
    return chosen


# Dask's nanny writes these into the calling process's environment (for the workers it spawns); left there, every
# later subprocess of the caller (a training run) would start with one thread
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")


@contextmanager
def _own_environment() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def dask_client(scheduler: str) -> Iterator[Any]:
    """A `distributed.Client` for `scheduler` (`local:N` starts and later stops a LocalCluster of N workers)."""
    with _own_environment():
        yield from _dask_client(scheduler)


def _dask_client(scheduler: str) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - the package's `dask` extra installs it
        raise SchedulerError(
            f"scheduler {scheduler!r} needs Dask: pip install 'voxelbase[dask]' (dask distributed)"
        ) from error
    if scheduler.startswith("local:"):
        workers = int(scheduler.partition(":")[2])
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(scheduler)  # waits distributed.comm.timeouts.connect (Dask's setting) for the scheduler
    except OSError as error:
        raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler!r}: {error}") from error
    try:
        yield client
    finally:
        client.close()


def _dask_completed(
    function: Callable[[Task], Result], tasks: list[Task], scheduler: str
) -> Iterator[tuple[Task, Callable[[], Result]]]:
    from distributed import as_completed

    with dask_client(scheduler) as client:
        futures = {
            client.submit(
                function, task, pure=False, retries=TASK_RETRIES, key=f"voxelbase-{index}-{uuid4().hex}"
            ): task
            for index, task in enumerate(tasks)
        }
        try:
            for future in as_completed(futures):
                yield futures.pop(future), future.result
        finally:
            client.cancel(list(futures))


def completed(
    function: Callable[[Task], Result],
    tasks: Iterable[Task],
    *,
    workers: int,
    scheduler: str | None = None,
) -> Iterator[tuple[Task, Callable[[], Result]]]:
    """(task, result getter) for every task as it completes; the getter re-raises the task's exception.

    With a `scheduler` (default: `$VOXELBASE_SCHEDULER`; see the module doc) the tasks run on Dask and `workers`
    is not used. Otherwise with one
    worker the tasks run here, one at a time, when their getter is called. Leaving the loop early (an exception,
    Ctrl-C, `break`) cancels the tasks not started yet.
    """
    tasks = list(tasks)
    scheduler = resolve_scheduler(scheduler)
    if scheduler is not None:
        yield from _dask_completed(function, tasks, scheduler)
        return
    if workers <= 1:
        for task in tasks:
            yield task, (lambda task=task: function(task))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(function, task): task for task in tasks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result
        finally:
            for future in pending:
                future.cancel()

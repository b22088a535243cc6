"""Per-case work in spawned worker processes: the one pool loop and the one default worker count.

Workers are spawned (not forked) so they start clean of the parent's threads, torch state and open catalog
connections; they never write the catalog, they hand results back to the main process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")


def worker_count(requested: int | None = None, *, tasks: int | None = None, cap: int | None = None) -> int:
    """`requested` workers, else one per CPU (at most `cap`); never more than there are tasks, never fewer than 1."""
    count = requested or min(os.cpu_count() or 1, cap or os.cpu_count() or 1)
    if tasks is not None:
        count = min(count, tasks)
    return max(1, count)


def completed(
    function: Callable[[Task], Result], tasks: Iterable[Task], *, workers: int
) -> Iterator[tuple[Task, Callable[[], Result]]]:
    """(task, result getter) for every task as it completes; the getter re-raises the task's exception.

    With one worker the tasks run here, one at a time, when their getter is called. Leaving the loop early (an
    exception, Ctrl-C, `break`) cancels the tasks not started yet.
    """
    tasks = list(tasks)
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

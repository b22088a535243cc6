"""`voxelbase preprocess` as a function: every labelled case of a dataset through one planned configuration.

Cases are independent, so they go to spawned worker processes one at a time; memory stays bounded by one case per
worker. Workers read the raw Zarr arrays, preprocess, and write the case under a hidden temporary name that is
renamed into place only when complete (on object storage: copied into place, the case's group node last; see
`voxelbase.store.location`); they never touch the catalog. The main process records each finished case
in its own short transaction. A killed run therefore leaves finished cases recorded and at most some temporary
folders, which the next run deletes before redoing what is missing. Cases whose inputs (source bytes, plan, code
version) are unchanged since they were stored are skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from voxelbase.catalog import transaction
from voxelbase.catalog.preprocessed import write_preprocessed_case
from voxelbase.parallel import completed, worker_count
from voxelbase.plan import ConfigurationPlan
from voxelbase.preprocessing.case import preprocess_case
from voxelbase.preprocessing.records import (
    PreprocessingError,
    PreprocessingInputs,
    input_hash,
    plan_hash,
    read_inputs,
)
from voxelbase.project import Project
from voxelbase.store.layout import (
    case_dir,
    case_exists,
    patch_chunks,
    read_case,
    stage_dir,
    stage_name,
    store_bytes,
    write_array,
    write_stage_groups,
)
from voxelbase.store.location import StorePath, make_dirs, remove_tree, replace_tree
from voxelbase.store.ome import read_case_geometry, write_case_group

PARTIAL = ".partial-"
HASH_FILE = ".input_hash"


@dataclass(frozen=True)
class CaseTask:
    project_root: str
    dataset: str
    case_id: str
    stage: str
    plan: ConfigurationPlan
    spacing: tuple[float, float, float]
    input_hash: str
    store: str | None = None  # the store location the main process settled: workers need not ask the catalog


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    properties: dict[str, Any]
    stored_bytes: int
    seconds: float


@dataclass(frozen=True)
class PreprocessResult:
    dataset: str
    plan: str
    configuration: str
    processed: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float
    stored_bytes: int
    store: StorePath

    def summary(self) -> str:
        return (
            f"preprocessed {len(self.processed)} case(s) of {self.dataset} for {self.plan}/{self.configuration} "
            f"in {self.seconds:.1f} s ({len(self.skipped)} already up to date); "
            f"{self.stored_bytes / 1e6:.1f} MB in {self.store}"
        )


def _label_dtype(label: np.ndarray) -> np.dtype:
    return np.dtype(np.int8) if label.size == 0 or (label.min() >= -128 and label.max() <= 127) else np.dtype(np.int16)


def preprocess_stored_case(task: CaseTask) -> CaseOutcome:
    """Worker: raw Zarr -> preprocess -> `<stage>/<case>` written whole under a temporary name, then renamed."""
    started = time.perf_counter()
    project = Project.resolve(task.project_root, store=task.store)
    image, label = read_case(project, task.dataset, task.case_id)
    image, label, properties = preprocess_case(image, label, spacing=task.spacing, plan=task.plan)
    stage = stage_dir(project, task.dataset, task.stage)
    final = stage / task.case_id
    partial = stage / f".{task.case_id}{PARTIAL}{os.getpid()}"
    try:
        remove_tree(partial)
        make_dirs(partial)
        chunks = patch_chunks(image.shape[1:], task.plan.patch_size)
        axes = tuple("zyx"[a] for a in task.plan.axes_forward)  # the stored order (transposed 2d: e.g. x, z, y)
        write_array(partial / "image", image, chunks=(1, *chunks), axes=("c", *axes))
        if label is not None:
            write_array(partial / "label", label.astype(_label_dtype(label)), chunks=chunks, axes=axes)
        raw = read_case_geometry(case_dir(project, task.dataset, task.case_id))
        backward = task.plan.axes_backward  # the geometry is recorded in (z, y, x)
        start = [properties["bbox"][0::2][b] for b in backward]
        spacing = [properties["target_spacing"][b] for b in backward]
        write_case_group(partial, raw and raw.cropped(start, spacing=spacing), case_id=task.case_id, axes=axes)
        (partial / HASH_FILE).write_text(task.input_hash)
        replace_tree(partial, final)
    except BaseException as error:
        remove_tree(partial)
        if isinstance(error, OSError):
            raise PreprocessingError(
                f"could not write preprocessed case {task.case_id!r} to {final}: {error}"
            ) from error
        raise
    return CaseOutcome(task.case_id, properties, store_bytes(final), time.perf_counter() - started)


def _is_stored(stage: StorePath, case_id: str, digest: str) -> bool:
    marker = stage / case_id / HASH_FILE
    return marker.is_file() and marker.read_text() == digest and case_exists(stage / case_id)


def _remove_partials(stage: StorePath) -> None:
    """Temporary folders of killed runs: never complete, so they can always go."""
    if stage.is_dir():
        for path in stage.iterdir():
            if path.name.startswith(".") and PARTIAL in path.name:
                remove_tree(path)


class _Recorder:
    """Writes finished cases to the catalog in short transactions, at most every `interval` seconds.

    Opening the catalog costs tens of milliseconds, more than preprocessing a small case; batching keeps it off the
    critical path while a kill still loses at most the last few seconds of records (those cases are redone).
    """

    def __init__(
        self, project: Project, inputs: PreprocessingInputs, digests: dict[str, str], *, interval: float = 2.0
    ):
        self.project, self.inputs, self.digests, self.interval = project, inputs, digests, interval
        self.waiting: list[CaseOutcome] = []
        self.last = time.monotonic()

    def add(self, outcome: CaseOutcome) -> None:
        self.waiting.append(outcome)
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.waiting:
            with transaction(self.project) as con:
                for outcome in self.waiting:
                    key = (self.inputs.dataset, self.inputs.plan_name, self.inputs.configuration, outcome.case_id)
                    write_preprocessed_case(
                        con,
                        key=key,
                        properties=outcome.properties,
                        input_digest=self.digests[outcome.case_id],
                        stored_bytes=outcome.stored_bytes,
                        seconds=outcome.seconds,
                    )
            self.waiting = []
        self.last = time.monotonic()


def preprocess_dataset(
    name: str,
    *,
    configuration: str,
    plan: str | None = None,
    workers: int | None = None,
    project: Project | str | None = None,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocess every labelled case of `name` for one configuration of a plan (the newest plan by default).

    Incremental: a case is skipped when its recorded input hash (case content, plan, code version) matches and its
    stored folder carries the same hash. Failed cases are reported together at the end; finished ones are kept.
    """
    started = time.perf_counter()
    resolved = Project.resolve(project)
    inputs = read_inputs(resolved, name, configuration=configuration, plan=plan)
    store = str(resolved.store_path)
    if not inputs.cases:
        raise PreprocessingError(f"dataset {name!r} has no labelled training cases to preprocess")
    stage = stage_name(inputs.plan_name, configuration)
    stage_path = stage_dir(resolved, name, stage)
    _remove_partials(stage_path)
    write_stage_groups(resolved, name, stage)
    plan_digest = plan_hash(inputs.plan)
    digests = {case.case_id: input_hash(case.content_hash, plan_digest) for case in inputs.cases}
    skipped = [
        c.case_id
        for c in inputs.cases
        if inputs.recorded.get(c.case_id) == digests[c.case_id]
        and _is_stored(stage_path, c.case_id, digests[c.case_id])
    ]
    tasks = [
        CaseTask(str(resolved.root), name, c.case_id, stage, inputs.plan, c.spacing, digests[c.case_id], store)
        for c in inputs.cases
        if c.case_id not in set(skipped)
    ]
    processed: list[str] = []
    failures: list[str] = []
    workers = worker_count(workers, tasks=len(tasks))
    recorder = _Recorder(resolved, inputs, digests)
    bar = tqdm(total=len(tasks), desc=f"preprocess {configuration}", unit="case", disable=None if progress else True)
    try:
        for task, result in completed(preprocess_stored_case, tasks, workers=workers):
            try:
                outcome = result()
            except Exception as error:  # one bad case does not stop the others
                failures.append(f"{task.case_id}: {error}")
            else:
                recorder.add(outcome)
                processed.append(task.case_id)
            bar.update()
    finally:
        bar.close()
        recorder.flush()  # also on Ctrl-C: whatever finished is recorded
    _remove_partials(stage_path)  # every task has ended: a temporary folder left is a killed worker's attempt
    if failures:
        raise PreprocessingError(
            f"{len(failures)} case(s) of {name!r} failed to preprocess ({len(processed) + len(skipped)} done and "
            "kept; run the command again after fixing the cause):\n  " + "\n  ".join(failures)
        )
    return PreprocessResult(
        dataset=name,
        plan=inputs.plan_name,
        configuration=configuration,
        processed=tuple(sorted(processed)),
        skipped=tuple(skipped),
        seconds=time.perf_counter() - started,
        stored_bytes=store_bytes(stage_path) if stage_path.exists() else 0,
        store=stage_path,
    )

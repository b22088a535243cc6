"""`ingest_dataset`: a dataset folder into the store and the catalog, all or nothing.

Cases are processed one per worker process (memory stays bounded by a few cases) and written to a staging
folder. Only when every case is valid does the main process record them in one catalog transaction and
swap the staging folder into place, so an error, a crash or Ctrl-C leaves earlier datasets exactly as they were.
On object storage the swap is `replace_tree`'s ordered copy (`voxelbase.store.location`): there is no rename.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import DatasetRows, dataset_content_hash, replace_dataset
from voxelbase.images import file_hash
from voxelbase.ingest.case import CaseRecord, ingest_case
from voxelbase.ingest.errors import IngestError
from voxelbase.ingest.layouts import DatasetSource, check_case_id, discover
from voxelbase.parallel import completed, worker_count
from voxelbase.project import Project
from voxelbase.store.layout import RAW_STAGE, dataset_dir
from voxelbase.store.location import StorePath, is_remote, remove_if_empty, remove_tree, replace_tree
from voxelbase.store.ome import ensure_hierarchy

HASH_MARKER = ".content_hash"


@dataclass(frozen=True)
class IngestResult:
    name: str
    status: str  # 'ingested', 'replaced' or 'unchanged'
    n_train: int
    n_test: int
    seconds: float
    source_bytes: int

    def summary(self) -> str:
        if self.status == "unchanged":
            return f"dataset {self.name!r} is already ingested from the same content: nothing to do"
        verb = "replaced" if self.status == "replaced" else "ingested"
        return (
            f"{verb} dataset {self.name!r}: {self.n_train} training and {self.n_test} test cases "
            f"({self.source_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
        )


def dataset_hash(source: DatasetSource, case_hashes: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(source.description, sort_keys=True).encode())
    for case_id in sorted(case_hashes):
        digest.update(f"{case_id}:{case_hashes[case_id]};".encode())
    return digest.hexdigest()


def _existing_hash(project: Project, name: str) -> str | None:
    if not project.catalog_path.exists():
        return None
    with connect(project, read_only=True) as con:
        return dataset_content_hash(con, name)


def ingest_dataset(
    source: str | os.PathLike,
    *,
    name: str,
    project: Project | str | None = None,
    workers: int | None = None,
    replace: bool = False,
) -> IngestResult:
    """Import an nnU-Net v2 raw folder or an MSD task folder as dataset `name`."""
    start = time.perf_counter()
    project = Project.resolve(project)
    check_case_id(name, where=Path(source))
    described = discover(Path(source))
    existing = _existing_hash(project, name)
    _recover_interrupted(dataset_dir(project, name), existing)
    if existing is not None:
        hashes = {
            c.case_id: file_hash([*c.image_files, *([c.label_file] if c.label_file else [])]) for c in described.cases
        }
        if dataset_hash(described, hashes) == existing:
            return IngestResult(name, "unchanged", *_counts(described), time.perf_counter() - start, 0)
        if not replace:
            raise IngestError(
                f"{described.root}: dataset {name!r} already exists with different content; "
                "pass --replace to replace it, or choose another --name"
            )

    target = dataset_dir(project, name)
    staging = target / f".raw-staging-{uuid.uuid4().hex[:12]}"
    try:
        records = _ingest_cases(described, staging, workers=workers)
        content_hash = dataset_hash(described, {r.case["case_id"]: r.case["content_hash"] for r in records})
        _commit(project, name, described, records, content_hash, staging)
    finally:
        if staging.exists():
            remove_tree(staging)
        remove_if_empty(target)
    n_train, n_test = _counts(described)
    total_bytes = sum(r.case["source_bytes"] for r in records)
    return IngestResult(
        name, "replaced" if existing else "ingested", n_train, n_test, time.perf_counter() - start, total_bytes
    )


def _recover_interrupted(target: StorePath, catalog_hash: str | None) -> None:
    """Finish or undo what a killed ingest of this dataset left behind; the catalog decides which.

    The catalog commits before the staged arrays are swapped in, so a staging folder whose recorded content
    hash is the catalog's is the current data (the swap was cut short); any other staging folder is debris.
    """
    if not target.is_dir():
        return
    raw = target / "raw"
    for staged in target.glob(".raw-staging-*"):
        marker = staged / HASH_MARKER
        if catalog_hash is not None and marker.is_file() and marker.read_text() == catalog_hash:
            _swap_in(staged, raw)
    for leftover in target.glob(".raw-staging-*"):
        remove_tree(leftover)
    for retired in target.glob(".raw-retired-*"):  # local stores only: object storage has no rename to retire by
        if not raw.exists():
            retired.rename(raw)
        else:
            remove_tree(retired)


def _swap_in(staged: StorePath, raw: StorePath) -> None:
    if is_remote(raw):
        # the ordered copy: every case's group node lands after its arrays, so no half-copied case is visible;
        # the staged copy (and its hash marker) stays until the copy is complete, for recovery to redo it
        replace_tree(staged, raw)
        (raw / HASH_MARKER).unlink(missing_ok=True)
        ensure_hierarchy(raw.parent.parent, raw.parent.name, RAW_STAGE)
        return
    retired = raw.with_name(f".raw-retired-{uuid.uuid4().hex[:12]}")
    if raw.exists():
        raw.rename(retired)
    staged.rename(raw)
    (raw / HASH_MARKER).unlink(missing_ok=True)
    ensure_hierarchy(raw.parent.parent, raw.parent.name, RAW_STAGE)  # store root, dataset and `raw` are groups
    remove_tree(retired)


def _counts(source: DatasetSource) -> tuple[int, int]:
    n_train = sum(c.split == "train" for c in source.cases)
    return n_train, len(source.cases) - n_train


def _ingest_cases(source: DatasetSource, staging: StorePath, *, workers: int | None) -> list[CaseRecord]:
    """Every case through `ingest_case` in worker processes; the first bad case stops the others."""
    work = functools.partial(
        ingest_case, staging=staging, declared=source.declared_values, n_channels=len(source.channel_names)
    )
    records: list[CaseRecord] = []
    with tqdm(total=len(source.cases), desc="ingest", unit="case", disable=None) as progress:
        for _, result in completed(work, source.cases, workers=worker_count(workers, tasks=len(source.cases))):
            records.append(result())  # re-raises a worker's IngestError
            progress.update()
    return sorted(records, key=lambda r: r.case["case_id"])


def _commit(
    project: Project, name: str, source: DatasetSource, records: list[CaseRecord], content_hash: str, staging: StorePath
) -> None:
    """Record every case in one transaction, then swap the staged arrays into `store/<name>/raw`.

    The catalog is the source of truth: the hash marker lets a later ingest finish a swap that a crash cut short.
    """
    (staging / HASH_MARKER).write_text(content_hash)
    rows = DatasetRows(
        name=name,
        source=str(source.root),
        layout=source.layout,
        file_ending=source.file_ending,
        channel_names=source.channel_names,
        labels=source.labels,
        description=source.description,
        content_hash=content_hash,
        cases=[r.case for r in records],
        label_stats=[(r.case["case_id"], v, n) for r in records for v, n in r.label_stats],
        foreground=[{"case_id": r.case["case_id"], **f} for r in records for f in r.foreground],
        samples=[(r.case["case_id"], c, values) for r in records for c, values in enumerate(r.samples)],
    )
    with transaction(project) as con:
        replace_dataset(con, rows)
    _swap_in(staging, dataset_dir(project, name) / "raw")

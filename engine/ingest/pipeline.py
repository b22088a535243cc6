"""`ingest_dataset`: a dataset folder into the store and the catalog, all or nothing.

Cases are processed one per worker process (memory stays bounded by a few cases) and written to a staging
folder. Only when every case is valid does the main process record them in one catalog transaction and
swap the staging folder into place, so an error, a crash or Ctrl-C leaves earlier datasets exactly as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from engine.catalog.connection import open_connection
from engine.ingest.case import CaseRecord, file_hash, ingest_case
from engine.ingest.errors import IngestError
from engine.ingest.layouts import DatasetSource, check_case_id, discover
from engine.project import Project
from engine.store.layout import dataset_dir

HASH_MARKER = ".content_hash"
DATASET_TABLES = (
    "intensity_samples",
    "foreground_stats",
    "label_stats",
    "cases",
    "labels",
    "channels",
    "splits",
    "datasets",
)


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
    con = open_connection(project)
    try:
        row = con.execute("SELECT content_hash FROM datasets WHERE name = ?", [name]).fetchone()
    finally:
        con.close()
    return row[0] if row else None


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
            shutil.rmtree(staging, ignore_errors=True)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
    n_train, n_test = _counts(described)
    total_bytes = sum(r.case["source_bytes"] for r in records)
    return IngestResult(
        name, "replaced" if existing else "ingested", n_train, n_test, time.perf_counter() - start, total_bytes
    )


def _recover_interrupted(target: Path, catalog_hash: str | None) -> None:
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
        shutil.rmtree(leftover, ignore_errors=True)
    for retired in target.glob(".raw-retired-*"):
        if not raw.exists():
            retired.rename(raw)
        else:
            shutil.rmtree(retired, ignore_errors=True)


def _swap_in(staged: Path, raw: Path) -> None:
    retired = raw.with_name(f".raw-retired-{uuid.uuid4().hex[:12]}")
    if raw.exists():
        raw.rename(retired)
    staged.rename(raw)
    (raw / HASH_MARKER).unlink(missing_ok=True)
    shutil.rmtree(retired, ignore_errors=True)


def _counts(source: DatasetSource) -> tuple[int, int]:
    n_train = sum(c.split == "train" for c in source.cases)
    return n_train, len(source.cases) - n_train


def _ingest_cases(source: DatasetSource, staging: Path, *, workers: int | None) -> list[CaseRecord]:
    workers = max(1, min(workers or os.cpu_count() or 1, len(source.cases)))
    kwargs = {"declared": source.declared_values, "n_channels": len(source.channel_names)}
    progress = tqdm(total=len(source.cases), desc="ingest", unit="case", disable=None)
    records: list[CaseRecord] = []
    try:
        if workers == 1:
            for case in source.cases:
                records.append(ingest_case(case, staging, **kwargs))
                progress.update()
            return records
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            pending = {pool.submit(ingest_case, case, staging, **kwargs) for case in source.cases}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        records.append(future.result())  # re-raises a worker's IngestError
                        progress.update()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    finally:
        progress.close()
    return sorted(records, key=lambda r: r.case["case_id"])


def _rows_to_arrow(rows: list[dict], schema: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({key: pa.array([row[key] for row in rows], type=dtype) for key, dtype in schema.items()})


def _insert(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.register("incoming", data)
    try:
        columns = ", ".join(data.column_names)
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")
    finally:
        con.unregister("incoming")


CASE_SCHEMA = {
    "dataset": pa.string(),
    "case_id": pa.string(),
    "split": pa.string(),
    "shape": pa.list_(pa.int32()),
    "spacing": pa.list_(pa.float64()),
    "origin": pa.list_(pa.float64()),
    "direction": pa.list_(pa.float64()),
    "crop_bbox": pa.list_(pa.int32()),
    "image_dtype": pa.string(),
    "label_dtype": pa.string(),
    "image_files": pa.list_(pa.string()),
    "label_file": pa.string(),
    "source_bytes": pa.int64(),
    "content_hash": pa.string(),
}


def _commit(
    project: Project, name: str, source: DatasetSource, records: list[CaseRecord], content_hash: str, staging: Path
) -> None:
    """Record every case in one transaction, then swap the staged arrays into `store/<name>/raw`.

    The catalog is the source of truth: the hash marker lets a later ingest finish a swap that a crash cut short.
    """
    (staging / HASH_MARKER).write_text(content_hash)
    con = open_connection(project)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            _write_rows(con, name, source, records, content_hash)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already rolled back
                con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    _swap_in(staging, dataset_dir(project, name) / "raw")


def _write_rows(
    con: duckdb.DuckDBPyConnection, name: str, source: DatasetSource, records: list[CaseRecord], content_hash: str
) -> None:
    for table in DATASET_TABLES:
        con.execute(f"DELETE FROM {table} WHERE {'name' if table == 'datasets' else 'dataset'} = ?", [name])
    con.execute(
        "INSERT INTO datasets (name, source, layout, file_ending, n_channels, content_hash, ignore_label, has_regions,"
        " description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            name,
            str(source.root),
            source.layout,
            source.file_ending,
            len(source.channel_names),
            content_hash,
            source.ignore_label,
            source.has_regions,
            json.dumps(source.description),
        ],
    )
    con.executemany("INSERT INTO channels VALUES (?, ?, ?)", [[name, i, c] for i, c in enumerate(source.channel_names)])
    con.executemany(
        "INSERT INTO labels (dataset, value, name, region_values, is_ignore) VALUES (?, ?, ?, ?, ?)",
        [
            [name, lab.value, lab.name, list(lab.region_values) if lab.region_values else None, lab.is_ignore]
            for lab in source.labels
        ],
    )
    _insert(con, "cases", _rows_to_arrow([{"dataset": name, **r.case} for r in records], CASE_SCHEMA))
    stats = [(r.case["case_id"], v, n) for r in records for v, n in r.label_stats]
    _insert(
        con,
        "label_stats",
        pa.table(
            {
                "dataset": pa.array([name] * len(stats), pa.string()),
                "case_id": pa.array([s[0] for s in stats], pa.string()),
                "label": pa.array([s[1] for s in stats], pa.int32()),
                "voxels": pa.array([s[2] for s in stats], pa.int64()),
            }
        ),
    )
    foreground = [{"dataset": name, "case_id": r.case["case_id"], **f} for r in records for f in r.foreground]
    _insert(
        con,
        "foreground_stats",
        _rows_to_arrow(
            foreground,
            {
                "dataset": pa.string(),
                "case_id": pa.string(),
                "channel": pa.int32(),
                "voxels": pa.int64(),
                "min": pa.float64(),
                "max": pa.float64(),
                "mean": pa.float64(),
                "std": pa.float64(),
            },
        ),
    )
    for record in records:
        for channel, values in enumerate(record.samples):
            if values.size:
                _insert(
                    con,
                    "intensity_samples",
                    pa.table(
                        {
                            "dataset": pa.array(np.full(values.size, name, dtype=object), pa.string()),
                            "case_id": pa.array(
                                np.full(values.size, record.case["case_id"], dtype=object), pa.string()
                            ),
                            "channel": pa.array(np.full(values.size, channel, np.int32)),
                            "value": pa.array(values, pa.float32()),
                        }
                    ),
                )

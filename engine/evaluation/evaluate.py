"""`voxelbase evaluate`: a folder of predictions against reference segmentations, into the catalog.

Predictions follow nnU-Net's naming, `<case><file ending>` in any format SimpleITK reads. References are either
a folder with the same file names (or the same case ids with another ending) or an ingested dataset, whose
labels are read from the raw Zarr arrays and whose geometry comes from the `cases` table. Every prediction must
have a reference with the same shape, spacing, origin and direction; otherwise nothing is written and the error
names the file. Cases are scored in worker processes; only the main process writes the catalog, in one
transaction (a `runs` row of kind 'evaluation', its `metrics` rows and an `evaluations` row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.datasets import case_geometries, dataset_info, dataset_regions, foreground_label_values
from voxelbase.catalog.results import insert_metrics, metric_summary, record_evaluation
from voxelbase.catalog.runs import record_finished_run
from voxelbase.errors import VoxelbaseError
from voxelbase.evaluation.metrics import Region, case_metrics, empty_label_metrics, regions_of
from voxelbase.images import Geometry, ImageFileError, read_image
from voxelbase.parallel import completed, worker_count
from voxelbase.project import Project
from voxelbase.store import case_dir
from voxelbase.store.location import StorePath, open_array

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl.gz", ".gipl", ".tif", ".tiff")


class EvaluationError(VoxelbaseError, ValueError):
    """Predictions that cannot be evaluated as given; the message names the file and the problem."""


@dataclass(frozen=True)
class CaseTask:
    """Everything a worker needs to score one case (picklable, no open handles)."""

    case_id: str
    prediction: Path
    reference: Path | None = None  # a reference file, or None to read the dataset's stored label
    store_label: StorePath | None = None  # the case's raw label Zarr array (a local or object-storage path)
    geometry: Geometry | None = None  # the stored label's


def split_case_id(name: str, *, file_ending: str | None = None) -> tuple[str, str] | None:
    """(case id, ending) of an image file name, or None when it is not an image of the expected ending."""
    endings = (file_ending,) if file_ending else IMAGE_ENDINGS
    for ending in endings:
        if name.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], ending
    return None


def list_predictions(pred_dir: Path, *, file_ending: str | None = None) -> dict[str, Path]:
    """case id -> prediction file, for the image files directly in `pred_dir`."""
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: prediction folder not found")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        parsed = split_case_id(path.name, file_ending=file_ending) if path.is_file() else None
        if parsed is None:
            continue
        if parsed[0] in found:
            raise EvaluationError(
                f"{pred_dir}: two predictions for case {parsed[0]!r}: {found[parsed[0]].name}, {path.name}"
            )
        found[parsed[0]] = path
    if not found:
        raise EvaluationError(f"{pred_dir}: no segmentation files ({', '.join(IMAGE_ENDINGS)}) found")
    return found


def _read(path: Path):
    try:
        return read_image(path)
    except ImageFileError as error:
        raise EvaluationError(str(error)) from error


def load_case_pair(task: CaseTask) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(prediction, reference, spacing) of one case after checking that their geometry agrees."""
    pred, pred_geometry = _read(task.prediction)
    if task.reference is not None:
        ref, ref_geometry = _read(task.reference)
        where = f"reference {task.reference}"
    else:
        ref = open_array(task.store_label)[...]
        ref_geometry = task.geometry
        where = f"the stored label of case {task.case_id!r}"
    if pred.shape != ref.shape:
        raise EvaluationError(
            f"{task.prediction}: shape {_zyx(pred.shape)} (z, y, x) differs from {where}: {_zyx(ref.shape)}"
        )
    problem = pred_geometry.mismatch(ref_geometry)
    if problem is not None:
        raise EvaluationError(f"{task.prediction}: geometry differs from {where}: {problem}")
    return pred, ref, ref_geometry.spacing


def _zyx(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _score(args: tuple[CaseTask, tuple[int, ...] | None, float, int | None]) -> tuple[str, list[dict]]:
    task, labels, tolerance, ignore_label = args
    pred, ref, spacing = load_case_pair(task)
    ignore = (ref == ignore_label) if ignore_label is not None else None
    if labels is None:  # labels unknown: score what appears; the caller adds rows for the rest
        present = set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())
        labels = tuple(sorted(int(v) for v in present if v > 0 and v != ignore_label))
    rows = case_metrics(pred, ref, labels=labels, spacing=spacing, nsd_tolerance_mm=tolerance, ignore_mask=ignore)
    return task.case_id, rows


def score_cases(
    tasks: Sequence[CaseTask],
    *,
    labels: Sequence[int] | None,
    nsd_tolerance_mm: float,
    ignore_label: int | None = None,
    workers: int | None = None,
) -> Iterator[tuple[str, list[dict]]]:
    """(case id, metric rows) per task, in order, computed by `workers` processes (1: in this process)."""
    label_tuple = None if labels is None else tuple(v if isinstance(v, Region) else int(v) for v in labels)
    args = [(task, label_tuple, float(nsd_tolerance_mm), ignore_label) for task in tasks]
    workers = worker_count(workers, tasks=len(args), cap=4)
    done: dict[str, list[dict]] = {}
    for (task, *_), result in completed(_score, args, workers=workers):
        done[task.case_id] = result()[1]
    for task in tasks:
        yield task.case_id, done.pop(task.case_id)


def _dataset_tasks(
    project: Project, dataset: str, predictions: dict[str, Path]
) -> tuple[list[CaseTask], list[int], int | None]:
    with connect(project, read_only=True) as con:
        info = dataset_info(con, dataset)
        if info is None:
            raise EvaluationError(f"dataset {dataset!r} is not in the catalog: ingest it first (voxelbase ingest)")
        stored = case_geometries(con, dataset, labelled=True)
        regions = dataset_regions(con, dataset)
        labels = regions_of(regions) if regions else foreground_label_values(con, dataset)
    missing = sorted(set(predictions) - set(stored))
    if missing:
        raise EvaluationError(
            f"no reference label in dataset {dataset!r} for prediction(s) {', '.join(predictions[c].name for c in missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    tasks = []
    for case_id, path in predictions.items():
        label_path = case_dir(project, dataset, case_id) / "label"
        if not label_path.exists():
            raise EvaluationError(f"case {case_id!r} of dataset {dataset!r} has no stored label at {label_path}")
        tasks.append(CaseTask(case_id, path, store_label=label_path, geometry=stored[case_id]))
    return tasks, labels, info.ignore_label


def _folder_tasks(reference_dir: Path, predictions: dict[str, Path]) -> list[CaseTask]:
    if not reference_dir.is_dir():
        raise EvaluationError(f"{reference_dir}: reference folder not found")
    tasks, missing = [], []
    for case_id, path in predictions.items():
        reference = reference_dir / path.name
        if not reference.is_file():
            candidates = [reference_dir / f"{case_id}{ending}" for ending in IMAGE_ENDINGS]
            reference = next((c for c in candidates if c.is_file()), None)
        if reference is None:
            missing.append(path.name)
        else:
            tasks.append(CaseTask(case_id, path, reference=reference))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise EvaluationError(f"{reference_dir}: no reference for prediction(s) {', '.join(missing[:5])}{more}")
    return tasks


def _folder_labels(reference_dir: Path) -> tuple[list | None, int | None]:
    """(labels, ignore label) from a dataset.json next to (or above) the references, as in nnU-Net's raw layout.

    A region dataset (labels declared as lists) is scored per region, in its declared order.
    """
    for candidate in (reference_dir / "dataset.json", reference_dir.parent / "dataset.json"):
        if candidate.is_file():
            declared = dict(json.loads(candidate.read_text()).get("labels", {}))
            ignore = declared.pop("ignore", None)
            ignore = ignore if isinstance(ignore, int) else None
            if any(isinstance(v, list) and len(v) > 1 for v in declared.values()):
                named = [(k, v if isinstance(v, list) else [v]) for k, v in declared.items() if v not in (0, [0])]
                return regions_of(named), ignore
            values = [v for v in declared.values() if isinstance(v, int) and v > 0]
            if values and len(values) == len(declared) - ("background" in declared):
                return sorted(values), ignore
    return None, None


def evaluate_folder(
    pred_dir: str | os.PathLike,
    *,
    reference_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    name: str | None = None,
    project: Project | str | None = None,
    labels: Sequence[int | Region] | None = None,
    nsd_tolerance_mm: float = 1.0,
    file_ending: str | None = None,
    workers: int | None = None,
) -> int:
    """Score every prediction in `pred_dir` and record the results; returns the new run id.

    Exactly one of `reference_dir` and `dataset` gives the references. Labels come from `labels`, else the
    dataset's declared labels, else a dataset.json beside the references, else whatever values appear.
    """
    if (reference_dir is None) == (dataset is None):
        raise EvaluationError("give exactly one of a reference folder (--reference) and a dataset (--dataset)")
    if not nsd_tolerance_mm >= 0:
        raise EvaluationError(f"the NSD tolerance must be >= 0 mm, got {nsd_tolerance_mm}")
    project = Project.resolve(project)
    pred_dir = Path(pred_dir).absolute()
    name = name or pred_dir.name
    predictions = list_predictions(pred_dir, file_ending=file_ending)
    ignore_label = None
    if dataset is not None:
        tasks, dataset_labels, ignore_label = _dataset_tasks(project, dataset, predictions)
        labels = labels if labels is not None else dataset_labels
        reference = f"dataset:{dataset}"
    else:
        reference_dir = Path(reference_dir).absolute()
        tasks = _folder_tasks(reference_dir, predictions)
        declared, ignore_label = _folder_labels(reference_dir)
        labels = labels if labels is not None else declared
        reference = str(reference_dir)
    results = list(
        score_cases(tasks, labels=labels, nsd_tolerance_mm=nsd_tolerance_mm, ignore_label=ignore_label, workers=workers)
    )
    if labels is None:  # fill in the labels a case lacks, so every case has a row for every label seen
        seen = sorted({row["label"] for _, rows in results for row in rows})
        results = [(c, _complete(rows, seen)) for c, rows in results]
        labels = seen
    with transaction(project) as con:
        run_id = record_finished_run(
            con,
            experiment=name,
            configuration=f"evaluation:{name}",
            fold="all",
            kind="evaluation",
            run_dir=str(pred_dir),
        )
        insert_metrics(con, run_id=run_id, cases=results, nsd_tolerance_mm=nsd_tolerance_mm)
        record_evaluation(
            con,
            run_id=run_id,
            name=name,
            pred_dir=str(pred_dir),
            reference=reference,
            dataset=dataset,
            nsd_tolerance_mm=nsd_tolerance_mm,
            n_cases=len(results),
            labels=[v.label if isinstance(v, Region) else int(v) for v in labels],
            regions=[v.name for v in labels] if labels and isinstance(labels[0], Region) else None,
        )
    return int(run_id)


def _complete(rows: list[dict], labels: Sequence[int]) -> list[dict]:
    by_label = {row["label"]: row for row in rows}
    return [by_label.get(label) or empty_label_metrics(label) for label in labels]


def evaluation_summary(run_id: int, *, project: Project | str | None = None):
    """Per label: cases, mean Dice, IoU, HD95 and NSD of one run (NULLs left out), as an Arrow table."""
    with connect(project, read_only=True) as con:
        return metric_summary(con, run_id)


def iter_case_pairs(
    pred_dirs: Sequence[str | os.PathLike],
    *,
    reference_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    project: Project | str | None = None,
) -> tuple[list | None, Iterator[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]], int | None]:
    """(labels, a generator of (prediction, reference, spacing), ignore label) over the predictions in several
    folders; a region dataset's labels are its `Region`s.

    For deciding postprocessing on cross-validation output (one folder per fold): every reference is checked
    before the first case is read, and the generator holds one case in memory at a time.
    """
    if (reference_dir is None) == (dataset is None):
        raise EvaluationError("give exactly one of a reference folder and a dataset")
    project = Project.resolve(project)
    predictions: dict[str, Path] = {}
    for folder in pred_dirs:
        for case_id, path in list_predictions(Path(folder)).items():
            if case_id in predictions:
                raise EvaluationError(f"case {case_id!r} is predicted twice: {predictions[case_id]} and {path}")
            predictions[case_id] = path
    if dataset is not None:
        tasks, labels, ignore = _dataset_tasks(project, dataset, predictions)
    else:
        tasks = _folder_tasks(Path(reference_dir), predictions)
        labels, ignore = _folder_labels(Path(reference_dir))
    return labels, (load_case_pair(task) for task in tasks), ignore

"""`voxelbase compare`: configurations x folds, mean +- std per label, from the catalog's summary views.

The table is built from `fold_summary` (one row per fold) and `configuration_summary` (a 'mean' row per
configuration over its pooled cross-validation cases, shown when it has more than one fold), so what it prints is what users get from
`voxelbase sql "SELECT * FROM fold_summary"` themselves. Columns: experiment, configuration, kind, fold, n_cases,
then per label `<metric>_<label>` (mean over cases, NULL cases left out) and `<metric>_<label>_std` (sample
standard deviation over cases), and `<metric>_fg`, the mean over labels (nnU-Net's foreground mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa

from voxelbase.catalog import connect
from voxelbase.catalog.results import fold_summaries, label_names_of_results, pooled_summaries
from voxelbase.catalog.runs import experiments_with_runs
from voxelbase.errors import VoxelbaseError
from voxelbase.project import Project

METRICS = ("dice", "iou", "hd95", "nsd")
KIND_ORDER = {"train": 0, "ensemble": 1, "evaluation": 2}


class CompareError(VoxelbaseError, ValueError):
    """A comparison that cannot be made as asked (unknown experiment or metric)."""


def _fold_key(fold: str) -> tuple:
    if fold.isdigit():
        return (0, int(fold), "")
    return (1 if fold == "all" else 2, 0, fold)


def compare(
    experiments: Sequence[str] | None = None, *, project: Project | str | None = None, metric: str = "dice"
) -> pa.Table:
    """The comparison table for `experiments` (all when None or empty) on one of dice, iou, hd95, nsd."""
    if metric not in METRICS:
        raise CompareError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    chosen = list(experiments) if experiments else None
    with connect(project, read_only=True) as con:
        folds = fold_summaries(con, chosen, metric=metric)
        pooled = pooled_summaries(con, chosen, metric=metric)
        # a value named differently in two datasets keeps its number
        names = {value: next(iter(n)) for value, n in label_names_of_results(con, chosen).items() if len(n) == 1}
        if chosen:
            known = experiments_with_runs(con)
            unknown = [e for e in chosen if e not in known]
            if unknown:
                raise CompareError(f"no runs recorded for experiment(s) {', '.join(unknown)}")
    labels = sorted({row[4] for row in folds + pooled})
    groups: dict[tuple, dict] = {}
    for experiment, configuration, kind, fold, label, n_cases, mean, std in folds + pooled:
        group = groups.setdefault((experiment, configuration, kind, fold), {"n_cases": 0, "values": {}})
        group["n_cases"] = max(group["n_cases"], int(n_cases))
        group["values"][label] = (mean, std)
    order = sorted(groups, key=lambda k: (k[0], KIND_ORDER.get(k[2], 9), k[1], _fold_key(k[3])))
    columns: dict[str, list] = {c: [] for c in ("experiment", "configuration", "kind", "fold", "n_cases")}
    label_columns = [f"{metric}_{names.get(label, label)}" for label in labels]
    for name in label_columns:
        columns[name] = []
        columns[f"{name}_std"] = []
    columns[f"{metric}_fg"] = []
    for key in order:
        group = groups[key]
        for field, value in zip(("experiment", "configuration", "kind", "fold"), key):
            columns[field].append(value)
        columns["n_cases"].append(group["n_cases"])
        means = []
        for label, name in zip(labels, label_columns):
            mean, std = group["values"].get(label, (None, None))
            columns[name].append(mean)
            columns[f"{name}_std"].append(std)
            if mean is not None:
                means.append(mean)
        columns[f"{metric}_fg"].append(sum(means) / len(means) if means else None)
    types = {
        name: (pa.string() if name in ("experiment", "configuration", "kind", "fold") else pa.float64())
        for name in columns
    }
    types["n_cases"] = pa.int64()
    return pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})


def for_display(table: pa.Table, *, digits: int = 4) -> pa.Table:
    """The comparison table with each mean and its std merged into one 'mean ± std' text column."""
    names = table.column_names
    out: dict[str, list] = {}
    for name in names:
        if name.endswith("_std") and name[: -len("_std")] in names:
            continue
        values = table.column(name).to_pylist()
        if f"{name}_std" in names:
            stds = table.column(f"{name}_std").to_pylist()
            values = [_pm(m, s, digits) for m, s in zip(values, stds)]
        elif table.schema.field(name).type == pa.float64():
            values = ["" if v is None else f"{v:.{digits}f}" for v in values]
        out[name] = values
    return pa.table(out)


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"

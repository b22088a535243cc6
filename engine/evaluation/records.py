"""Writing per-case metrics into the catalog, inside the caller's transaction.

Training's validation and `voxelbase evaluate` both end here, so the `metrics` rows mean the same whoever wrote
them. Rows go in through one Arrow table per call (DuckDB's `executemany` is slow for thousands of rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa

METRIC_COLUMNS = ("dice", "iou", "hd95", "nsd")
COUNT_COLUMNS = ("tp", "fp", "fn", "n_ref", "n_pred")


def metrics_table(
    run_id: int, cases: Iterable[tuple[str, Sequence[Mapping]]], *, nsd_tolerance_mm: float | None
) -> pa.Table:
    """An Arrow table shaped like `metrics` from (case_id, rows of `case_metrics`) pairs."""
    columns: dict[str, list] = {name: [] for name in ("run_id", "case_id", "label", *METRIC_COLUMNS, *COUNT_COLUMNS)}
    for case_id, rows in cases:
        for row in rows:
            columns["run_id"].append(int(run_id))
            columns["case_id"].append(str(case_id))
            columns["label"].append(int(row["label"]))
            for name in METRIC_COLUMNS:
                value = row.get(name)
                columns[name].append(None if value is None else float(value))
            for name in COUNT_COLUMNS:
                columns[name].append(int(row[name]))
    types = {"run_id": pa.int32(), "case_id": pa.string(), "label": pa.int32()}
    types.update({name: pa.float64() for name in METRIC_COLUMNS})
    types.update({name: pa.int64() for name in COUNT_COLUMNS})
    table = pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})
    tolerance = pa.array([nsd_tolerance_mm] * table.num_rows, type=pa.float64())
    return table.append_column("nsd_tolerance_mm", tolerance)


def insert_metrics(
    con, *, run_id: int, cases: Iterable[tuple[str, Sequence[Mapping]]], nsd_tolerance_mm: float | None = 1.0
) -> int:
    """Insert the metric rows of one run (replacing rows of the same run and case); returns the row count.

    `cases` yields (case_id, rows) with rows as returned by `engine.evaluation.metrics.case_metrics`.
    Pass `nsd_tolerance_mm=None` when HD95/NSD were not computed.
    """
    table = metrics_table(run_id, cases, nsd_tolerance_mm=nsd_tolerance_mm)
    if table.num_rows == 0:
        return 0
    con.register("_voxelbase_metrics_rows", table)
    try:
        con.execute(
            "DELETE FROM metrics WHERE run_id = ? AND case_id IN (SELECT DISTINCT case_id FROM _voxelbase_metrics_rows)",
            [int(run_id)],
        )
        con.execute(
            "INSERT INTO metrics (run_id, case_id, label, dice, iou, hd95, nsd, tp, fp, fn, n_ref, n_pred, "
            "nsd_tolerance_mm) SELECT run_id, case_id, label, dice, iou, hd95, nsd, tp, fp, fn, n_ref, n_pred, "
            "nsd_tolerance_mm FROM _voxelbase_metrics_rows"
        )
    finally:
        con.unregister("_voxelbase_metrics_rows")
    return table.num_rows

"""The result tables: `metrics`, `evaluations`, `postprocessing`, `selections` (one writer each, here) and the
summary views over them (`fold_summary`, `configuration_summary`, `configuration_ranking` in schema/006).

Validation, ensembles and `voxelbase evaluate` all write metrics through `insert_metrics`, so the rows mean the same
whoever wrote them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

METRIC_COLUMNS = ("dice", "iou", "hd95", "nsd")
COUNT_COLUMNS = ("tp", "fp", "fn", "n_ref", "n_pred")


def metrics_table(
    run_id: int, cases: Iterable[tuple[str, Sequence[Mapping]]], *, nsd_tolerance_mm: float | None
) -> pa.Table:
    """An Arrow table shaped like `metrics` from (case_id, rows of `case_metrics`) pairs."""
    columns: dict[str, list] = {
        name: [] for name in ("run_id", "case_id", "label", "region", *METRIC_COLUMNS, *COUNT_COLUMNS)
    }
    for case_id, rows in cases:
        for row in rows:
            columns["run_id"].append(int(run_id))
            columns["case_id"].append(str(case_id))
            columns["label"].append(int(row["label"]))
            columns["region"].append(row.get("region"))
            for name in METRIC_COLUMNS:
                value = row.get(name)
                columns[name].append(None if value is None else float(value))
            for name in COUNT_COLUMNS:
                columns[name].append(int(row[name]))
    types = {"run_id": pa.int32(), "case_id": pa.string(), "label": pa.int32(), "region": pa.string()}
    types.update({name: pa.float64() for name in METRIC_COLUMNS})
    types.update({name: pa.int64() for name in COUNT_COLUMNS})
    table = pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})
    tolerance = pa.array([nsd_tolerance_mm] * table.num_rows, type=pa.float64())
    return table.append_column("nsd_tolerance_mm", tolerance)


def insert_metrics(
    con, *, run_id: int, cases: Iterable[tuple[str, Sequence[Mapping]]], nsd_tolerance_mm: float | None = 1.0
) -> int:
    """Insert the metric rows of one run (replacing rows of the same run and case); returns the row count.

    `cases` yields (case_id, rows) with rows as `voxelbase.evaluation.metrics.case_metrics` returns them.
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
            "INSERT INTO metrics (run_id, case_id, label, region, dice, iou, hd95, nsd, tp, fp, fn, n_ref, n_pred, "
            "nsd_tolerance_mm) SELECT run_id, case_id, label, region, dice, iou, hd95, nsd, tp, fp, fn, n_ref, "
            "n_pred, nsd_tolerance_mm FROM _voxelbase_metrics_rows"
        )
    finally:
        con.unregister("_voxelbase_metrics_rows")
    return table.num_rows


def clear_metrics(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    """Forget a run's metrics (its segmentations changed): nothing superseded is ever read as current."""
    con.execute("DELETE FROM metrics WHERE run_id = ?", [int(run_id)])


def metric_row_count(con: duckdb.DuckDBPyConnection, run_id: int) -> int:
    return con.execute("SELECT count(*) FROM metrics WHERE run_id = ?", [int(run_id)]).fetchone()[0]


def metric_summary(con: duckdb.DuckDBPyConnection, run_id: int) -> pa.Table:
    """Per label: cases, mean Dice, IoU, HD95 and NSD of one run (NULLs left out)."""
    return con.sql(
        "SELECT label, count(*) AS n_cases, count(dice) AS n_dice, round(avg(dice), 4) AS dice, "
        "round(avg(iou), 4) AS iou, round(avg(hd95), 3) AS hd95, round(avg(nsd), 4) AS nsd "
        "FROM metrics WHERE run_id = ? GROUP BY label ORDER BY label",
        params=[int(run_id)],
    ).to_arrow_table()


def record_evaluation(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: int,
    name: str,
    pred_dir: str,
    reference: str,
    dataset: str | None,
    nsd_tolerance_mm: float,
    n_cases: int,
    labels: Sequence[int],
    regions: Sequence[str] | None = None,
) -> None:
    con.execute(
        "INSERT INTO evaluations (run_id, name, pred_dir, reference, dataset, nsd_tolerance_mm, n_cases, labels, "
        "regions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run_id,
            name,
            pred_dir,
            reference,
            dataset,
            float(nsd_tolerance_mm),
            n_cases,
            [int(v) for v in labels],
            list(regions) if regions else None,
        ],
    )


def record_postprocessing(
    con: duckdb.DuckDBPyConnection, *, experiment: str, configuration: str, decision: dict
) -> None:
    """Store a decision (replacing an earlier one)."""
    con.execute(
        "INSERT OR REPLACE INTO postprocessing (experiment, configuration, decision, created_at) "
        "VALUES (?, ?, ?, current_timestamp)",
        [experiment, configuration, json.dumps(decision)],
    )


def postprocessing_decision(con: duckdb.DuckDBPyConnection, *, experiment: str, configuration: str) -> dict | None:
    """The stored decision for an experiment's configuration (or 'ensemble:a+b'), None when none was made."""
    row = con.execute(
        "SELECT decision FROM postprocessing WHERE experiment = ? AND configuration = ?", [experiment, configuration]
    ).fetchone()
    return None if row is None else json.loads(row[0])


@dataclass(frozen=True)
class SelectionRow:
    experiment: str
    choice: str  # a configuration or 'ensemble:<a>+<b>'
    kind: str  # 'train' or 'ensemble'
    members: tuple[str, ...]  # the configurations whose models predict
    mean_dice: float
    ranking: tuple[dict, ...]  # every candidate, best first


def record_selection(con: duckdb.DuckDBPyConnection, selection: SelectionRow) -> None:
    """Store an experiment's chosen configuration or ensemble (replacing an earlier choice)."""
    con.execute(
        "INSERT OR REPLACE INTO selections (experiment, choice, kind, members, mean_dice, ranking, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, current_timestamp)",
        [
            selection.experiment,
            selection.choice,
            selection.kind,
            list(selection.members),
            selection.mean_dice,
            json.dumps(list(selection.ranking)),
        ],
    )


def selection(con: duckdb.DuckDBPyConnection, experiment: str) -> SelectionRow | None:
    row = con.execute(
        "SELECT choice, kind, members, mean_dice, ranking FROM selections WHERE experiment = ?", [experiment]
    ).fetchone()
    if row is None:
        return None
    choice, kind, members, mean_dice, ranking = row
    return SelectionRow(experiment, choice, kind, tuple(members), float(mean_dice), tuple(json.loads(ranking)))


def configuration_ranking(con: duckdb.DuckDBPyConnection, experiment: str) -> list[tuple]:
    """(configuration, kind, mean_dice, n_folds, folds, n_cases) of every candidate with results."""
    return con.execute(
        "SELECT configuration, kind, mean_dice, n_folds, folds, n_cases FROM configuration_ranking "
        "WHERE experiment = ?",
        [experiment],
    ).fetchall()


_METRICS = ("dice", "iou", "hd95", "nsd")


def _check_metric(metric: str) -> None:
    if metric not in _METRICS:  # names a column: never interpolate anything else
        raise ValueError(f"unknown metric {metric!r}")


def fold_summaries(con: duckdb.DuckDBPyConnection, experiments: Sequence[str] | None, *, metric: str) -> list[tuple]:
    """(experiment, configuration, kind, fold, label, n_cases, mean, std) per fold and label (`fold_summary`)."""
    _check_metric(metric)
    chosen = list(experiments) if experiments else None
    return con.execute(
        f"SELECT experiment, configuration, kind, fold, label, n_cases, {metric}_mean, {metric}_std "
        "FROM fold_summary WHERE (? IS NULL OR list_contains(?, experiment))",
        [chosen, chosen],
    ).fetchall()


def pooled_summaries(con: duckdb.DuckDBPyConnection, experiments: Sequence[str] | None, *, metric: str) -> list[tuple]:
    """The same over each configuration's pooled cross-validation cases, for configurations of several folds
    (`configuration_summary`); the fold column reads 'mean'."""
    _check_metric(metric)
    chosen = list(experiments) if experiments else None
    return con.execute(
        f"SELECT experiment, configuration, kind, 'mean', label, n_cases, {metric}_mean, {metric}_std "
        "FROM configuration_summary WHERE (? IS NULL OR list_contains(?, experiment)) AND n_folds > 1",
        [chosen, chosen],
    ).fetchall()


def label_names_of_results(con: duckdb.DuckDBPyConnection, experiments: Sequence[str] | None) -> dict[int, set[str]]:
    """label value -> the names it has in the datasets of the recorded results (of `experiments`, or all)."""
    chosen = list(experiments) if experiments else None
    rows = con.execute(
        """
        SELECT DISTINCT l.value, l.name
        FROM result_runs r
        LEFT JOIN experiments e ON e.name = r.experiment
        LEFT JOIN evaluations ev ON ev.run_id = r.run_id
        JOIN labels l ON l.dataset = coalesce(e.dataset, ev.dataset) AND l.value IS NOT NULL
        WHERE NOT EXISTS (SELECT 1 FROM datasets d WHERE d.name = l.dataset AND d.has_regions)
          AND (? IS NULL OR list_contains(?, r.experiment))
        """,
        [chosen, chosen],
    ).fetchall()
    names: dict[int, set[str]] = {}
    for value, name in rows:
        names.setdefault(int(value), set()).add(name)
    # a region run's rows name their region: its number is the output channel, not a label value
    regions = con.execute(
        "SELECT DISTINCT m.label, m.region FROM result_runs r JOIN metrics m ON m.run_id = r.run_id "
        "WHERE m.region IS NOT NULL AND (? IS NULL OR list_contains(?, r.experiment))",
        [chosen, chosen],
    ).fetchall()
    for label, region in regions:
        names.setdefault(int(label), set()).add(region)
    return names


def cross_validation_case_metrics(con: duckdb.DuckDBPyConnection, experiment: str) -> list[tuple]:
    """(configuration, kind, fold, case_id, label, dice, hd95) of every validation case of the cross-validation
    runs that count (`result_runs`, training runs and ensembles, fold 'all' left out), by configuration, case."""
    return con.execute(
        "SELECT r.configuration, r.kind, r.fold, m.case_id, m.label, m.dice, m.hd95 "
        "FROM result_runs r JOIN metrics m ON m.run_id = r.run_id "
        "WHERE r.experiment = ? AND r.kind IN ('train', 'ensemble') AND r.fold <> 'all' "
        "ORDER BY r.kind = 'ensemble', r.configuration, m.case_id, m.label",
        [experiment],
    ).fetchall()


def postprocessing_decisions(con: duckdb.DuckDBPyConnection, experiment: str) -> dict[str, dict]:
    """configuration (or 'ensemble:a+b') -> its recorded postprocessing decision, for one experiment."""
    rows = con.execute(
        "SELECT configuration, decision FROM postprocessing WHERE experiment = ? ORDER BY configuration", [experiment]
    ).fetchall()
    return {configuration: json.loads(decision) for configuration, decision in rows}


def forget_experiment_results(con: duckdb.DuckDBPyConnection, experiment: str) -> None:
    """Drop an experiment's metrics, postprocessing decisions and selection (before its runs are dropped)."""
    con.execute(
        "DELETE FROM metrics WHERE run_id IN (SELECT run_id FROM runs WHERE experiment = ? AND kind <> 'evaluation')",
        [experiment],
    )
    con.execute("DELETE FROM postprocessing WHERE experiment = ?", [experiment])
    con.execute("DELETE FROM selections WHERE experiment = ?", [experiment])

"""The `plans` and `splits` tables (written by planning) and the questions stages ask of them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import duckdb

from voxelbase.plan import ConfigurationPlan


def replace_plans(
    con: duckdb.DuckDBPyConnection, dataset: str, plan: str, configurations: Mapping[str, ConfigurationPlan]
) -> None:
    """Replace the rows of this dataset and plan, unless they already hold exactly these plans."""
    existing = dict(
        con.execute(
            "SELECT configuration, plan_json FROM plans WHERE dataset = ? AND plan = ?", [dataset, plan]
        ).fetchall()
    )
    wanted = {name: c.to_dict() for name, c in configurations.items()}
    if set(existing) == set(wanted) and all(json.loads(existing[n]) == wanted[n] for n in wanted):
        return
    con.execute("DELETE FROM plans WHERE dataset = ? AND plan = ?", [dataset, plan])
    for name, c in configurations.items():
        arch = c.architecture
        con.execute(
            "INSERT INTO plans (dataset, plan, configuration, spacing, patch_size, batch_size, median_shape, "
            "n_stages, features_per_stage, strides, kernel_sizes, normalization, batch_dice, dataset_hash, plan_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                dataset,
                plan,
                name,
                list(c.spacing),
                list(c.patch_size),
                c.batch_size,
                list(c.median_image_size_in_voxels),
                arch.n_stages,
                list(arch.features_per_stage),
                [list(s) for s in arch.strides],
                [list(k) for k in arch.kernel_sizes],
                [n.scheme for n in c.normalization],
                c.batch_dice,
                c.dataset_hash,
                json.dumps(wanted[name]),
            ],
        )


def newest_plan_name(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    row = con.execute(
        "SELECT plan FROM plans WHERE dataset = ? GROUP BY plan ORDER BY max(created_at) DESC, plan LIMIT 1", [dataset]
    ).fetchone()
    return None if row is None else row[0]


def configuration_plan(
    con: duckdb.DuckDBPyConnection, dataset: str, plan: str, configuration: str
) -> ConfigurationPlan | None:
    row = con.execute(
        "SELECT plan_json FROM plans WHERE dataset = ? AND plan = ? AND configuration = ?",
        [dataset, plan, configuration],
    ).fetchone()
    return None if row is None else ConfigurationPlan.from_dict(json.loads(row[0]))


def planned_configurations(con: duckdb.DuckDBPyConnection, dataset: str, plan: str) -> list[str]:
    rows = con.execute(
        "SELECT configuration FROM plans WHERE dataset = ? AND plan = ? ORDER BY configuration", [dataset, plan]
    ).fetchall()
    return [r[0] for r in rows]


def plan_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str, plan: str, configuration: str | None = None) -> str:
    """A digest of the recorded plan JSON (of one configuration, or all of the plan): 'missing' when none."""
    row = con.execute(
        "SELECT string_agg(configuration || ':' || md5(CAST(plan_json AS VARCHAR)), ',' ORDER BY configuration) "
        "FROM plans WHERE dataset = ? AND plan = ? AND (? IS NULL OR configuration = ?)",
        [dataset, plan, configuration, configuration],
    ).fetchone()
    return (row[0] if row else None) or "missing"


def has_splits(con: duckdb.DuckDBPyConnection, dataset: str) -> bool:
    return con.execute("SELECT count(*) FROM splits WHERE dataset = ?", [dataset]).fetchone()[0] > 0


def write_splits(con: duckdb.DuckDBPyConnection, dataset: str, folds: Sequence[Mapping[str, Sequence[str]]]) -> None:
    """Replace a dataset's splits with `folds` ([{'train': [...], 'val': [...]}, ...], fold k is folds[k])."""
    con.execute("DELETE FROM splits WHERE dataset = ?", [dataset])
    rows = [
        [dataset, str(fold), case_id, role]
        for fold, split in enumerate(folds)
        for role in ("train", "val")
        for case_id in split[role]
    ]
    if rows:
        con.executemany("INSERT INTO splits (dataset, fold, case_id, role) VALUES (?, ?, ?, ?)", rows)


def _fold_key(fold: str) -> tuple:
    return (not fold.isdigit(), int(fold) if fold.isdigit() else 0, fold)


def dataset_splits(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, dict[str, list[str]]]:
    """{fold: {'train': [...], 'val': [...]}} with case ids sorted, folds in order; empty when none."""
    rows = con.execute(
        "SELECT fold, role, case_id FROM splits WHERE dataset = ? ORDER BY fold, role, case_id", [dataset]
    ).fetchall()
    folds: dict[str, dict[str, list[str]]] = {}
    for fold, role, case_id in rows:
        folds.setdefault(fold, {"train": [], "val": []}).setdefault(role, []).append(case_id)
    return dict(sorted(folds.items(), key=lambda kv: _fold_key(kv[0])))


def splits_fingerprint(con: duckdb.DuckDBPyConnection, dataset: str, fold: str) -> str:
    """A digest of one numbered fold's split: 'missing' when the fold has none.

    Fold 'all' uses no split (it trains on every labelled case): its input is
    `datasets.labelled_cases_fingerprint`, and asking for it here is a mistake, refused rather than answered
    with a digest of splits it does not read.
    """
    if fold == "all":
        raise ValueError("fold 'all' has no split: fingerprint it with datasets.labelled_cases_fingerprint")
    row = con.execute(
        "SELECT string_agg(case_id || ':' || role, ',' ORDER BY case_id) FROM splits WHERE dataset = ? AND fold = ?",
        [dataset, fold],
    ).fetchone()
    return (row[0] if row else None) or "missing"

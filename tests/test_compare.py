"""Summary views, the compare table and best-configuration selection over a real catalog with known metrics."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.results import insert_metrics
from voxelbase.catalog.runs import ensemble_members, ensemble_name
from voxelbase.evaluation.compare import compare, for_display
from voxelbase.evaluation.selection import SelectionError, ensemble_candidates, load_selection, select_best

# configuration -> fold -> case -> (label 1 Dice, label 2 Dice)
FULLRES = {
    "0": {"a": (0.9, 0.6), "b": (0.8, None)},
    "1": {"c": (0.7, 0.5), "d": (0.9, 0.7)},
    "2": {"e": (0.85, 0.65)},
}
FULLRES_L1 = (0.9 + 0.8 + 0.7 + 0.9 + 0.85) / 5
FULLRES_L2 = (0.6 + 0.5 + 0.7 + 0.65) / 4


def flat(l1: float, l2: float) -> dict:
    return {fold: {case: (l1, l2) for case in cases} for fold, cases in FULLRES.items()}


def rows_for(dice: tuple) -> list[dict]:
    rows = []
    for label, value in zip((1, 2), dice):
        rows.append(
            {
                "label": label,
                "dice": value,
                "iou": None if value is None else value / (2 - value),
                "hd95": None if value is None else 10 * (1 - value),
                "nsd": 1.0 if value is None else value,
                "tp": 0 if value is None else 10,
                "fp": 1,
                "fn": 1,
                "n_ref": 11,
                "n_pred": 11,
            }
        )
    return rows


def add_run(con, configuration, fold, cases, *, status="finished", kind="train", experiment="exp") -> int:
    run_id = con.execute(
        "INSERT INTO runs (experiment, configuration, fold, kind, status) VALUES (?, ?, ?, ?, ?) RETURNING run_id",
        [experiment, configuration, fold, kind, status],
    ).fetchone()[0]
    insert_metrics(con, run_id=run_id, cases=[(c, rows_for(d)) for c, d in cases.items()])
    return run_id


@pytest.fixture
def project(tmp_path):
    with transaction(tmp_path) as con:
        con.execute("INSERT INTO experiments (name, dataset, spec, spec_hash) VALUES ('exp', 'synth', '{}', 'h')")
        con.execute(
            "INSERT INTO labels (dataset, value, name) VALUES ('synth', 0, 'background'), ('synth', 1, 'organ'), ('synth', 2, 'lesion')"
        )
        add_run(con, "3d_fullres", "1", {"c": (0.1, 0.1), "d": (0.1, 0.1)})  # superseded by the newer run below
        for fold, cases in FULLRES.items():
            add_run(con, "3d_fullres", fold, cases)
        add_run(con, "3d_fullres", "2", {"e": (0.0, 0.0)}, status="failed")  # failed runs never count
        for fold, cases in flat(0.8, 0.6).items():
            add_run(con, "2d", fold, cases)
        add_run(con, "3d_lowres", "0", {"a": (0.99, 0.99), "b": (0.99, 0.99)})  # folds 1, 2 missing
        add_run(con, "3d_fullres", "all", {"a": (1.0, 1.0)})  # trained on everything: not cross-validation
    return tmp_path


def add_ensemble(project, l1, l2):
    with transaction(project) as con:
        for fold, cases in flat(l1, l2).items():
            add_run(con, ensemble_name(["3d_fullres", "2d"]), fold, cases, kind="ensemble")


def test_fold_and_configuration_summaries(project):
    with connect(project, read_only=True) as con:
        fold1 = con.execute(
            "SELECT label, n_cases, dice_mean, dice_std FROM fold_summary "
            "WHERE configuration = '3d_fullres' AND fold = '1' ORDER BY label"
        ).fetchall()
        assert fold1[0][:2] == (1, 2) and fold1[0][2] == pytest.approx(0.8)
        assert fold1[0][3] == pytest.approx(((0.1**2) * 2) ** 0.5)  # sample std of 0.7, 0.9
        fold0_l2 = con.execute(
            "SELECT n_cases, n_dice, dice_mean FROM fold_summary WHERE configuration = '3d_fullres' AND fold = '0' AND label = 2"
        ).fetchone()
        assert fold0_l2 == (2, 1, pytest.approx(0.6))  # the NULL Dice is left out of the mean
        pooled = dict(
            con.execute(
                "SELECT label, dice_mean FROM configuration_summary WHERE configuration = '3d_fullres'"
            ).fetchall()
        )
        assert pooled[1] == pytest.approx(FULLRES_L1) and pooled[2] == pytest.approx(FULLRES_L2)
        ranking = con.execute(
            "SELECT configuration, mean_dice, n_folds, rank FROM configuration_ranking ORDER BY rank"
        ).fetchall()
    assert [r[0] for r in ranking] == ["3d_lowres", "3d_fullres", "2d"]
    assert ranking[1][1] == pytest.approx((FULLRES_L1 + FULLRES_L2) / 2) and ranking[1][2] == 3


def test_select_best_needs_complete_folds_and_prefers_ensembles_only_when_better(project):
    best = select_best("exp", project=project)
    assert best.choice == "3d_fullres" and best.kind == "train" and best.members == ("3d_fullres",)
    assert best.mean_dice == pytest.approx((FULLRES_L1 + FULLRES_L2) / 2)
    lowres = next(r for r in best.ranking if r["configuration"] == "3d_lowres")
    assert lowres["eligible"] is False and lowres["missing_folds"] == ["1", "2"]
    assert ensemble_candidates("exp", project=project) == [("2d", "3d_fullres")]

    add_ensemble(project, 0.85, 0.6)  # 0.725 > 0.72125
    best = select_best("exp", project=project)
    assert best.choice == "ensemble:2d+3d_fullres" and best.kind == "ensemble"
    assert ensemble_members(best.choice) == ("2d", "3d_fullres")
    assert load_selection("exp", project=project) == best
    with connect(project, read_only=True) as con:
        assert con.execute("SELECT count(*), any_value(choice) FROM selections").fetchone() == (1, best.choice)
        assert (
            json.loads(con.execute("SELECT ranking FROM selections").fetchone()[0])[0]["configuration"] == best.choice
        )


def test_ties_go_to_the_single_configuration(project):
    add_ensemble(project, FULLRES_L1, FULLRES_L2)  # same score up to rounding
    assert select_best("exp", project=project).choice == "3d_fullres"


def test_select_best_without_results_is_a_clear_error(project):
    with pytest.raises(SelectionError, match="no cross-validation metrics"):
        select_best("other", project=project)


def test_compare_table(project):
    add_ensemble(project, 0.85, 0.6)
    table = compare(["exp"], project=project)
    rows = table.to_pylist()
    keys = [(r["configuration"], r["fold"]) for r in rows]
    assert keys[:5] == [("2d", "0"), ("2d", "1"), ("2d", "2"), ("2d", "mean"), ("3d_fullres", "0")]
    assert ("3d_fullres", "all") in keys and ("3d_lowres", "0") in keys
    assert ("3d_lowres", "mean") not in keys  # one fold: its mean row would repeat it
    assert keys.index(("3d_fullres", "all")) < keys.index(("3d_fullres", "mean"))
    assert rows[-1]["kind"] == "ensemble" and rows[-1]["fold"] == "mean"
    assert table.column_names[:5] == ["experiment", "configuration", "kind", "fold", "n_cases"]
    fullres_mean = next(r for r in rows if r["configuration"] == "3d_fullres" and r["fold"] == "mean")
    assert fullres_mean["dice_organ"] == pytest.approx(FULLRES_L1)
    assert fullres_mean["dice_lesion"] == pytest.approx(FULLRES_L2)
    assert fullres_mean["dice_fg"] == pytest.approx((FULLRES_L1 + FULLRES_L2) / 2)
    assert fullres_mean["n_cases"] == 5
    hd95 = compare(None, project=project, metric="hd95").to_pylist()
    assert next(r for r in hd95 if r["configuration"] == "2d")["hd95_organ"] == pytest.approx(2.0)
    shown = for_display(table).to_pylist()
    assert shown[0]["dice_organ"] == "0.8000 ± 0.0000"
    with pytest.raises(ValueError, match="no runs"):
        compare(["missing"], project=project)


def test_compare_command(project):
    from voxelbase.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["--project", str(project), "compare", "exp", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["configuration"] for r in rows} == {"2d", "3d_fullres", "3d_lowres"}
    result = runner.invoke(cli, ["--project", str(project), "compare", "--metric", "nsd"])
    assert result.exit_code == 0, result.output
    assert "nsd_organ" in result.output and "±" in result.output
    result = runner.invoke(cli, ["--project", str(project), "compare", "nope"])
    assert result.exit_code != 0 and "nope" in result.output

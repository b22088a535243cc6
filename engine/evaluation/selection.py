"""Picking an experiment's best configuration or ensemble from cross-validation results in the catalog.

The score is nnU-Net's (``find_best_configuration``): mean foreground Dice over the pooled cross-validation cases
(per label the mean over cases, then the mean over labels), read from the `configuration_ranking` view over
`metrics`. A single configuration is a candidate when its finished training runs cover every cross-validation
fold trained for the experiment (all five, or whichever were trained); an ensemble ('ensemble:<a>+<b>', a run of
kind 'ensemble' whose metrics were computed on averaged probabilities by inference) is a candidate when its
members are. The best score wins; scores within `tie_tolerance` of it count as ties, which go to the simpler
candidate: a single configuration before an ensemble, then nnU-Net's configuration order.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from engine.catalog import connect, transaction
from engine.errors import VoxelbaseError
from engine.project import Project

ENSEMBLE_PREFIX = "ensemble:"
CONFIGURATION_ORDER = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")  # nnU-Net's default model order


class SelectionError(VoxelbaseError, ValueError):
    """No candidate can be selected; the message says what is missing."""


@dataclass(frozen=True)
class Selection:
    experiment: str
    choice: str  # a configuration or 'ensemble:<a>+<b>'
    kind: str  # 'train' or 'ensemble'
    members: tuple[str, ...]  # the configurations whose models predict
    mean_dice: float
    ranking: tuple[dict, ...]  # every candidate, best first


def ensemble_name(members: Sequence[str]) -> str:
    """The configuration name of an ensemble run, members sorted so each pair has one name."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two configurations, got {list(members)}")
    return ENSEMBLE_PREFIX + "+".join(sorted(members))


def ensemble_members(configuration: str) -> tuple[str, ...]:
    """The configurations of 'ensemble:<a>+<b>', or (configuration,) for a single one."""
    if configuration.startswith(ENSEMBLE_PREFIX):
        return tuple(configuration[len(ENSEMBLE_PREFIX) :].split("+"))
    return (configuration,)


def _cv_runs(con, experiment: str) -> dict[str, set[str]]:
    rows = con.execute(
        "SELECT configuration, list(DISTINCT fold) FROM result_runs "
        "WHERE experiment = ? AND kind = 'train' AND fold <> 'all' GROUP BY configuration",
        [experiment],
    ).fetchall()
    return {configuration: set(folds) for configuration, folds in rows}


def ensemble_candidates(experiment: str, *, project: Project | str | None = None) -> list[tuple[str, str]]:
    """Pairs of configurations whose finished cross-validation runs cover every trained fold: the ensembles
    worth computing (by inference, which records them as runs of kind 'ensemble' named by `ensemble_name`)."""
    with connect(project, read_only=True) as con:
        trained = _cv_runs(con, experiment)
    required = set().union(*trained.values()) if trained else set()
    complete = sorted((c for c, folds in trained.items() if folds >= required), key=_order_key)
    return list(itertools.combinations(complete, 2))


def _order_key(configuration: str) -> tuple:
    members = ensemble_members(configuration)
    return (
        len(members),
        [CONFIGURATION_ORDER.index(m) if m in CONFIGURATION_ORDER else len(CONFIGURATION_ORDER) for m in members],
        configuration,
    )


def rank_candidates(experiment: str, *, project: Project | str | None = None) -> list[dict]:
    """Every configuration and ensemble with cross-validation results, best first, each with `eligible`."""
    with connect(project, read_only=True) as con:
        trained = _cv_runs(con, experiment)
        rows = con.execute(
            "SELECT configuration, kind, mean_dice, n_folds, folds, n_cases FROM configuration_ranking "
            "WHERE experiment = ?",
            [experiment],
        ).fetchall()
    required = set().union(*trained.values()) if trained else set()
    complete = {c for c, folds in trained.items() if folds >= required}
    ranking = []
    for configuration, kind, mean_dice, n_folds, folds, n_cases in rows:
        members = ensemble_members(configuration)
        missing = sorted(set().union(*(required - trained.get(m, set()) for m in members)))
        ranking.append(
            {
                "configuration": configuration,
                "kind": kind,
                "members": list(members),
                "mean_dice": None if mean_dice is None else float(mean_dice),
                "n_folds": int(n_folds),
                "folds": list(folds),
                "n_cases": int(n_cases),
                "eligible": mean_dice is not None and all(m in complete for m in members),
                "missing_folds": missing,
            }
        )
    ranking.sort(key=lambda r: (not r["eligible"], -(r["mean_dice"] or 0.0), _order_key(r["configuration"])))
    return ranking


def select_best(
    experiment: str, *, project: Project | str | None = None, tie_tolerance: float = 1e-9, record: bool = True
) -> Selection:
    """The best candidate of `experiment`, recorded in `selections` (replacing an earlier choice) when `record`."""
    ranking = rank_candidates(experiment, project=project)
    eligible = [r for r in ranking if r["eligible"]]
    if not eligible:
        if not ranking:
            raise SelectionError(
                f"experiment {experiment!r} has no cross-validation metrics: train and validate its folds first"
            )
        detail = "; ".join(f"{r['configuration']} lacks folds {r['missing_folds']}" for r in ranking)
        raise SelectionError(f"no configuration of {experiment!r} has finished every trained fold: {detail}")
    best_score = max(r["mean_dice"] for r in eligible)
    tied = [r for r in eligible if r["mean_dice"] >= best_score - tie_tolerance]
    best = min(tied, key=lambda r: _order_key(r["configuration"]))
    selection = Selection(
        experiment=experiment,
        choice=best["configuration"],
        kind=best["kind"],
        members=tuple(best["members"]),
        mean_dice=best["mean_dice"],
        ranking=tuple(ranking),
    )
    if record:
        with transaction(project) as con:
            con.execute(
                "INSERT OR REPLACE INTO selections (experiment, choice, kind, members, mean_dice, ranking, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, current_timestamp)",
                [
                    experiment,
                    selection.choice,
                    selection.kind,
                    list(selection.members),
                    selection.mean_dice,
                    json.dumps(ranking),
                ],
            )
    return selection


def load_selection(experiment: str, *, project: Project | str | None = None) -> Selection | None:
    """The recorded choice for `experiment` (what `predict` uses when no configuration is given), or None."""
    with connect(project, read_only=True) as con:
        row = con.execute(
            "SELECT choice, kind, members, mean_dice, ranking FROM selections WHERE experiment = ?", [experiment]
        ).fetchone()
    if row is None:
        return None
    choice, kind, members, mean_dice, ranking = row
    return Selection(experiment, choice, kind, tuple(members), float(mean_dice), tuple(json.loads(ranking)))

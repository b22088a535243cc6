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

from voxelbase.catalog import connect, transaction
from voxelbase.catalog.results import SelectionRow, configuration_ranking, record_selection
from voxelbase.catalog.results import selection as selection_row
from voxelbase.catalog.runs import ensemble_members, finished_folds
from voxelbase.errors import VoxelbaseError
from voxelbase.project import Project

CONFIGURATION_ORDER = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")  # nnU-Net's default model order


class SelectionError(VoxelbaseError, ValueError):
    """No candidate can be selected; the message says what is missing."""


Selection = SelectionRow  # experiment, choice, kind, members, mean_dice, ranking (best first)


def _cv_runs(con, experiment: str) -> dict[str, set[str]]:
    return {c: set(folds) for c, folds in finished_folds(con, experiment, cross_validation=True).items()}


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
        rows = configuration_ranking(con, experiment)
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
            record_selection(con, selection)
    return selection


def load_selection(experiment: str, *, project: Project | str | None = None) -> Selection | None:
    """The recorded choice for `experiment` (what `predict` uses when no configuration is given), or None."""
    with connect(project, read_only=True) as con:
        return selection_row(con, experiment)

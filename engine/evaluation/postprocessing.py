"""Keeping the largest connected component, and deciding on cross-validation whether to, as nnU-Net does.

nnU-Net's rule (``nnunetv2.postprocessing.remove_connected_components.determine_postprocessing``):

1. try keeping only the largest connected component of the whole foreground (all labels as one mask; removed
   voxels become background); accept it if the mean foreground Dice improves and no label's mean Dice drops;
2. then, on top of what step 1 left, for each label in turn try keeping only that label's largest component;
   accept it on the same rule.

Means are nnU-Net's: per label the mean of per-case Dice over the cases where it is defined (cases with the label
in neither reference nor prediction are left out), and the foreground mean is the mean of those per-label means.
Components are connected through faces, edges and corners (26-neighbourhood, skimage's default for `label`), and
when several components tie for largest all of them are kept, as in nnU-Net.

The decision streams cases: every candidate is scored on each case while that case is in memory, so memory stays
at one case whatever the number of cases. That works because keeping the largest component of label `l` changes
only label `l`'s voxels, so each per-label candidate can be scored independently of the others (on both possible
outcomes of step 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from voxelbase.catalog import transaction
from voxelbase.catalog.results import record_postprocessing
from voxelbase.evaluation.evaluate import iter_case_pairs
from voxelbase.evaluation.metrics import Region, overlap_scores
from voxelbase.evaluation.postprocessing_regions import decide_region_postprocessing
from voxelbase.volumes.components import largest_component_mask


class _Scores:
    """Per-label lists of per-case Dice for one candidate (None-free: undefined cases are skipped)."""

    def __init__(self, labels: Sequence[int]):
        self.values: dict[int, list[float]] = {int(label): [] for label in labels}

    def add(self, label: int, dice: float | None) -> None:
        if dice is not None:
            self.values[label].append(dice)

    def mean(self, label: int) -> float:
        values = self.values[label]
        return float(np.mean(values)) if values else float("nan")


def _dice(p: np.ndarray, r: np.ndarray, n_ref: int, keep: np.ndarray | None = None) -> float | None:
    """Dice with `r` already masked (n_ref its count); `keep` leaves the prediction's ignored voxels out."""
    if keep is not None:
        p = p & keep
    tp = int(np.count_nonzero(p & r))
    return overlap_scores(tp, int(np.count_nonzero(p)) - tp, n_ref - tp)[0]


def _foreground_mean(means: dict[int, float]) -> float:
    finite = [v for v in means.values() if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _improves(before: dict[int, float], after: dict[int, float]) -> bool:
    """nnU-Net's acceptance: the foreground mean goes up and no label's mean goes down."""
    if not _foreground_mean(after) > _foreground_mean(before):
        return False
    return not any(after[k] < before[k] for k in before)


def decide_postprocessing(
    cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    *,
    labels: Sequence[int],
    ignore_label: int | None = None,
) -> dict:
    """Decide, on (prediction, reference, spacing) cases, which largest-component steps to apply; voxels the
    reference marks with `ignore_label` count for no Dice (nnU-Net's evaluation).

    Returns a JSON-able dict: {"foreground_lcc": bool, "per_label_lcc": [labels], "dice_before": mean foreground
    Dice, "dice_after": after the accepted steps, "label_dice_before"/"label_dice_after": per label, "n_cases"}.
    `cases` may be a generator; each case is released before the next is read.
    """
    labels = [int(label) for label in labels]
    base = _Scores(labels)  # as predicted
    fg = _Scores(labels)  # after keeping the largest foreground component
    per_label_on_base = _Scores(labels)  # label l after keeping its largest component, on the raw prediction
    per_label_on_fg = _Scores(labels)  # same, on top of the foreground step
    n_cases = 0
    for pred, ref, _spacing in cases:
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}")
        n_cases += 1
        foreground = pred > 0
        fg_kept = largest_component_mask(foreground)
        keep = None if ignore_label is None else ref != ignore_label
        for label in labels:
            r = ref == label
            n_ref = int(np.count_nonzero(r))
            p = pred == label
            p_fg = p & fg_kept
            base.add(label, _dice(p, r, n_ref, keep))
            fg.add(label, _dice(p_fg, r, n_ref, keep))
            per_label_on_base.add(label, _dice(largest_component_mask(p), r, n_ref, keep))
            per_label_on_fg.add(label, _dice(largest_component_mask(p_fg), r, n_ref, keep))
    if n_cases == 0:
        raise ValueError("no cases to decide postprocessing on")

    before = {label: base.mean(label) for label in labels}
    after_fg = {label: fg.mean(label) for label in labels}
    foreground_lcc = _improves(before, after_fg)
    current = dict(after_fg if foreground_lcc else before)
    candidates = per_label_on_fg if foreground_lcc else per_label_on_base
    per_label_lcc = []
    if len(labels) > 1:  # with one label the per-label step is the foreground step again (nnU-Net skips it too)
        for label in labels:
            trial = dict(current)
            trial[label] = candidates.mean(label)
            if _improves(current, trial):
                per_label_lcc.append(label)
                current = trial
    return {
        "foreground_lcc": bool(foreground_lcc),
        "per_label_lcc": per_label_lcc,
        "dice_before": _json_float(_foreground_mean(before)),
        "dice_after": _json_float(_foreground_mean(current)),
        "label_dice_before": {str(k): _json_float(v) for k, v in before.items()},
        "label_dice_after": {str(k): _json_float(v) for k, v in current.items()},
        "n_cases": n_cases,
    }


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def determine_postprocessing(
    experiment: str,
    configuration: str,
    *,
    pred_dirs,
    dataset: str | None = None,
    reference_dir=None,
    labels: Sequence[int] | None = None,
    project=None,
) -> dict:
    """Decide on the cross-validation predictions in `pred_dirs` (one folder per fold) and record the decision
    for (experiment, configuration) -- the step nnU-Net runs after `find_best_configuration`."""
    source = {"reference_dir": reference_dir, "dataset": dataset, "project": project}
    found_labels, cases, ignore_label = iter_case_pairs(pred_dirs, **source)
    labels = labels if labels is not None else found_labels
    if not labels:
        raise ValueError("the labels to postprocess are unknown: pass labels=[...]")
    if isinstance(labels[0], Region):
        decision = decide_region_postprocessing(
            lambda: iter_case_pairs(pred_dirs, **source)[1], regions=labels, ignore_label=ignore_label
        )
    else:
        decision = decide_postprocessing(cases, labels=labels, ignore_label=ignore_label)
    with transaction(project) as con:
        record_postprocessing(con, experiment=experiment, configuration=configuration, decision=decision)
    return decision

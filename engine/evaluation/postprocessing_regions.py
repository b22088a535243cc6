"""nnU-Net's postprocessing decision for region datasets, and the ignore label's part in both decisions.

Regions overlap (whole tumour holds tumour core holds enhancing tumour), so keeping the largest component of one
region changes the others' voxels and the candidates cannot be scored independently in one pass as plain labels
are. The rule is nnU-Net's all the same: try the largest foreground component; then, region after region in
output order, try keeping only the region's largest component (its removed voxels become background) on top of
what was accepted so far; accept a step when the mean over regions of the per-region mean Dice goes up and no
region's mean goes down. Each trial is one streaming pass over the cases (one case in memory at a time), so a
decision reads the cases (number of regions + 2) times. Voxels the reference marks with the ignore label count for
no Dice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from voxelbase.evaluation.metrics import Region, class_mask, overlap_scores
from voxelbase.volumes.components import apply_postprocessing

Cases = Callable[[], Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]]]


def masked_dice(p: np.ndarray, r: np.ndarray, keep: np.ndarray | None) -> float | None:
    """Dice of two masks over the voxels in `keep` (all when None)."""
    if keep is not None:
        p, r = p & keep, r & keep
    tp = int(np.count_nonzero(p & r))
    return overlap_scores(tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp)[0]


def _means(
    cases: Cases, regions: Sequence[Region], decision: dict, ignore_label: int | None
) -> tuple[dict[int, float], int]:
    values: dict[int, list[float]] = {region.label: [] for region in regions}
    n = 0
    for pred, ref, _spacing in cases():
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}")
        n += 1
        seg = apply_postprocessing(pred, decision)
        keep = None if ignore_label is None else ref != ignore_label
        for region in regions:
            dice = masked_dice(class_mask(seg, region), class_mask(ref, region), keep)
            if dice is not None:
                values[region.label].append(dice)
    if n == 0:
        raise ValueError("no cases to decide postprocessing on")
    return {label: float(np.mean(v)) if v else float("nan") for label, v in values.items()}, n


def _mean(means: dict[int, float]) -> float:
    finite = [v for v in means.values() if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _improves(before: dict[int, float], after: dict[int, float]) -> bool:
    if not _mean(after) > _mean(before):
        return False
    return not any(after[k] < before[k] for k in before)


def _json(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def decide_region_postprocessing(cases: Cases, *, regions: Sequence[Region], ignore_label: int | None = None) -> dict:
    """The decision for a region dataset: {"foreground_lcc", "per_region_lcc": [[values], ...] (applied in
    order), "per_label_lcc": [], "dice_before", "dice_after", "label_dice_before"/"label_dice_after" keyed by
    region number (as its metric rows), "region_names" (number -> name), "n_cases"}. `cases` makes a fresh iterator of (prediction, reference, spacing) per pass."""
    current: dict = {"foreground_lcc": False, "per_label_lcc": [], "per_region_lcc": []}
    before, n_cases = _means(cases, regions, current, ignore_label)
    best = before
    trial = {**current, "foreground_lcc": True}
    after = _means(cases, regions, trial, ignore_label)[0]
    if _improves(best, after):
        current, best = trial, after
    if len(regions) > 1:
        for region in regions:
            trial = {**current, "per_region_lcc": [*current["per_region_lcc"], list(region.values)]}
            after = _means(cases, regions, trial, ignore_label)[0]
            if _improves(best, after):
                current, best = trial, after
    return {
        **current,
        "dice_before": _json(_mean(before)),
        "dice_after": _json(_mean(best)),
        "label_dice_before": {str(k): _json(v) for k, v in before.items()},
        "label_dice_after": {str(k): _json(v) for k, v in best.items()},
        "region_names": {str(region.label): region.name for region in regions},
        "n_cases": n_cases,
    }

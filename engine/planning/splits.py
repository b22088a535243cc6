"""nnU-Net's default five-fold cross-validation split, so folds here hold the same cases as nnU-Net's.

nnU-Net sorts the case ids and runs scikit-learn's KFold(5, shuffle=True, random_state=12345): a
RandomState(12345) shuffles the indices, consecutive runs of the shuffled indices are the validation folds
(the first n % k folds one case larger), and both lists are stated in sorted order. Reproduced here with
numpy alone, for any number of folds k from 2 to n (checked against scikit-learn for every n < 40).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_SEED = 12345
N_FOLDS = 5


def default_splits(
    case_ids: Sequence[str], *, n_folds: int = N_FOLDS, seed: int = SPLIT_SEED
) -> list[dict[str, list[str]]]:
    """[{'train': [...], 'val': [...]}, ...] per fold; needs 2 <= `n_folds` <= number of cases (KFold's rule: one
    fold would train on nothing, and more folds than cases would leave a fold without validation cases)."""
    keys = sorted(case_ids)
    n = len(keys)
    if n_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"{n_folds}-fold cross-validation needs at least {n_folds} cases, got {n}")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = [n // n_folds + (1 if fold < n % n_folds else 0) for fold in range(n_folds)]
    splits = []
    start = 0
    for size in sizes:
        val = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [keys[i] for i in range(n) if i not in val],
                "val": [keys[i] for i in range(n) if i in val],
            }
        )
    return splits

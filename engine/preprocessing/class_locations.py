"""Fixed-seed samples of each label's voxel coordinates, for foreground oversampling in the loader.

Same numbers as nnU-Net's `_sample_foreground_locations`: one RandomState(1234) drawn label after label,
max(min(n, 10000), ceil(1% of n)) distinct voxels of a label's n, voxels enumerated in C order. Storing a sample
instead of every voxel keeps the catalog small; 1% keeps large structures well covered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

SEED = 1234
MIN_SAMPLES = 10_000
MIN_FRACTION = 0.01


def sample_count(n: int) -> int:
    return max(min(n, MIN_SAMPLES), math.ceil(n * MIN_FRACTION))


def sample_class_locations(label: np.ndarray, labels: Iterable[int], *, seed: int = SEED) -> dict[int, np.ndarray]:
    """{label: (k, 3) int32 (z, y, x) coordinates}; an absent label maps to an empty (0, 3) array."""
    wanted = [int(v) for v in labels]
    flat = label.ravel()
    voxels = np.flatnonzero(np.isin(flat, np.asarray(wanted, dtype=flat.dtype)))
    values = flat[voxels]
    order = np.argsort(values, kind="stable")
    voxels, values = voxels[order], values[order]
    rng = np.random.RandomState(seed)
    out: dict[int, np.ndarray] = {}
    for value in wanted:
        lo, hi = np.searchsorted(values, value, side="left"), np.searchsorted(values, value, side="right")
        n = int(hi - lo)
        if n == 0:
            out[value] = np.zeros((0, 3), dtype=np.int32)
            continue
        picked = voxels[lo + rng.choice(n, sample_count(n), replace=False)]
        out[value] = np.stack(np.unravel_index(picked, label.shape), axis=1).astype(np.int32)
    return out


def sample_locations_by_class(
    label: np.ndarray, classes: Mapping[int, tuple[int, ...]], *, seed: int = SEED
) -> dict[int, np.ndarray]:
    """{key: (k, 3) int32 coordinates} for each key's label values (a region, or every annotated voxel).

    Plain labels (a key covering only its own value) are drawn first, exactly as `sample_class_locations` draws
    them; keys covering several values (regions, the annotated voxels of a sparsely labelled case) follow, from the
    same random stream, over the union of their values' voxels in C order.
    """
    plain = [key for key, values in classes.items() if tuple(values) == (key,)]
    out = sample_class_locations(label, plain, seed=seed) if plain else {}
    rng = np.random.RandomState(seed)
    if plain:  # continue the stream where the plain labels left it
        flat = label.ravel()
        for key in plain:
            n = int(np.count_nonzero(flat == key))
            if n:
                rng.choice(n, sample_count(n), replace=False)
    for key, values in classes.items():
        if key in out:
            continue
        voxels = np.flatnonzero(np.isin(label.ravel(), np.asarray(values, dtype=np.int64)))
        if voxels.size == 0:
            out[key] = np.zeros((0, 3), dtype=np.int32)
            continue
        picked = voxels[rng.choice(voxels.size, sample_count(voxels.size), replace=False)]
        out[key] = np.stack(np.unravel_index(picked, label.shape), axis=1).astype(np.int32)
    return out

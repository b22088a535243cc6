"""Intensity normalization, one scheme per channel, from the plan's `normalization` entries.

Runs after cropping and before resampling, as in nnU-Net: the nonzero mask is exact at the original resolution,
and resampled masks would no longer fit the image. Arithmetic is float32 like nnU-Net's, so values agree with its
preprocessed arrays to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxelbase.plan import Normalization

SCHEMES = ("ct", "zscore", "noscale", "rescale_to_0_1")
_EPS = 1e-8


def normalize_channel(channel: np.ndarray, *, entry: Normalization, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize one (Z, Y, X) channel by its plan entry; returns a new float32 array.

    `mask` is the nonzero mask; it is used only by zscore with `use_nonzero_mask`, which normalizes inside the
    mask and leaves the outside at 0.
    """
    scheme = entry.scheme
    out = channel.astype(np.float32, copy=True)
    if scheme == "ct":
        missing = [k for k in ("mean", "std", "percentile_00_5", "percentile_99_5") if getattr(entry, k) is None]
        if missing:
            raise ValueError(f"ct normalization needs the dataset's foreground {', '.join(missing)} in the plan")
        np.clip(out, entry.percentile_00_5, entry.percentile_99_5, out=out)
        out -= np.float32(entry.mean)
        out /= np.float32(max(entry.std, _EPS))
    elif scheme == "zscore":
        if entry.use_nonzero_mask and mask is not None:
            inside = out[mask]
            mean, std = inside.mean(), inside.std()
            out[mask] = (inside - mean) / max(std, _EPS)
            out[~mask] = 0
        else:
            mean, std = out.mean(), out.std()
            out -= mean
            out /= max(std, _EPS)
    elif scheme == "rescale_to_0_1":
        out -= out.min()
        out /= max(out.max(), _EPS)
    elif scheme != "noscale":
        raise ValueError(f"unknown normalization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return out


def normalize(image: np.ndarray, *, entries: Sequence[Normalization], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalize every channel of a (C, Z, Y, X) image; one plan entry per channel."""
    if len(entries) != image.shape[0]:
        raise ValueError(f"the plan normalizes {len(entries)} channel(s) but the image has {image.shape[0]}")
    out = np.empty(image.shape, dtype=np.float32)
    for c, entry in enumerate(entries):
        out[c] = normalize_channel(image[c], entry=entry, mask=mask)
    return out

"""Window placement and the Gaussian importance map of nnU-Net's sliding-window inference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Window start positions per axis (nnU-Net's compute_steps_for_sliding_window).

    Steps are at most patch * step_size apart, spread evenly so the last window ends exactly at the image border:
    image 110, patch 64, step 0.5 gives [0, 23, 46]. The image must be at least as large as the patch.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if len(image_size) != len(patch_size):
        raise ValueError(f"image size {tuple(image_size)} and patch size {tuple(patch_size)} differ in length")
    steps = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; pad it")
        n_steps = math.ceil((size - patch) / (patch * step_size)) + 1
        if n_steps > 1:
            spacing = (size - patch) / (n_steps - 1)
            steps.append([int(np.round(spacing * i)) for i in range(n_steps)])
        else:
            steps.append([0])
    return steps


@lru_cache(maxsize=4)
def _gaussian_numpy(patch_size: tuple[int, ...], sigma_scale: float) -> np.ndarray:
    delta = np.zeros(patch_size)
    delta[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(delta, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= g.max()
    # a zero weight would make voxels that only a window's corner sees divide 0 by 0
    nonzero = g[g > 0]
    g[g == 0] = nonzero.min()
    g.setflags(write=False)
    return g


def gaussian_importance_map(
    patch_size: Sequence[int],
    *,
    sigma_scale: float = 1.0 / 8,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A Gaussian centred in the patch, sigma = patch / 8 per axis, max 1, no zeros.

    Windows weigh their centre more than their border, where the network sees less context.
    """
    g = _gaussian_numpy(tuple(int(p) for p in patch_size), float(sigma_scale))
    return torch.from_numpy(g.copy()).to(device=device, dtype=dtype)

"""nnU-Net v2's own sliding-window arithmetic, for models imported from nnU-Net: the same logits to the last bit.

nnU-Net's predictor (2.8.1, CPU) accumulates differently from Voxelbase's `predict_logits`: one window per forward
pass in its loop order, mirrored outputs summed onto the plain one and divided, the window multiplied by a float16
Gaussian scaled to a maximum of 10 (zeros raised to its smallest value), added into float16 accumulators of logits
and weights, divided in float16; the folds' float16 logits summed and divided in float16. Near window borders the
float16 products lose precision, so an exact copy of these steps is what makes an imported model predict what
`nnUNetv2_predict` predicts (probabilities within 1e-4), which Voxelbase's float32 accumulation does not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from voxelbase.inference.gaussian import compute_steps
from voxelbase.inference.sliding_window import _pad_to_patch

VALUE_SCALING = 10.0


def nnunet_gaussian(patch_size: Sequence[int], *, sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's `compute_gaussian(patch, sigma_scale, value_scaling_factor=10, dtype=float16)`."""
    delta = np.zeros(patch_size)
    delta[tuple(p // 2 for p in patch_size)] = 1
    g = gaussian_filter(delta, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    g /= np.max(g) / VALUE_SCALING
    out = torch.from_numpy(g).to(dtype=torch.float16)
    zero = out == 0
    out[zero] = torch.min(out[~zero])
    return out


def _mirrored(network: torch.nn.Module, x: torch.Tensor, mirror_axes: Sequence[int] | None) -> torch.Tensor:
    prediction = network(x)
    if mirror_axes:
        axes = [int(a) + 2 for a in mirror_axes]
        combinations = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]
        for dims in combinations:
            prediction += torch.flip(network(torch.flip(x, dims)), dims)
        prediction /= len(combinations) + 1
    return prediction


@torch.inference_mode()
def nnunet_logits(
    network: torch.nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    step_size: float,
    mirror_axes: Sequence[int] | None,
    use_gaussian: bool,
    sigma_scale: float,
    device: torch.device,
) -> torch.Tensor:
    """float16 logits (K, Z, Y, X) on the CPU of a preprocessed (C, Z, Y, X) image, as nnU-Net computes them."""
    network.eval()
    patch = [int(p) for p in patch_size]
    padded, crop = _pad_to_patch(image.float(), patch)
    spatial = padded.shape[1:]
    if len(patch) == 3:
        steps = compute_steps(spatial, patch, step_size)
        windows = [
            (slice(None), *(slice(s, s + p) for s, p in zip(start, patch, strict=True)))
            for start in itertools.product(*steps)
        ]
    else:  # a 2d network runs slice by slice along z
        steps = compute_steps(spatial[1:], patch, step_size)
        windows = [
            (slice(None), z, *(slice(s, s + p) for s, p in zip(start, patch, strict=True)))
            for z in range(spatial[0])
            for start in itertools.product(*steps)
        ]
    gaussian = nnunet_gaussian(patch, sigma_scale=sigma_scale) if use_gaussian else 1
    logits = None
    weights = torch.zeros(spatial, dtype=torch.float16)
    for window in windows:
        x = torch.clone(padded[window][None], memory_format=torch.contiguous_format).to(device)
        prediction = _mirrored(network, x, mirror_axes)[0].to("cpu")
        if logits is None:
            logits = torch.zeros((prediction.shape[0], *spatial), dtype=torch.float16)
        if use_gaussian:
            prediction *= gaussian
        logits[window] += prediction
        weights[window[1:]] += gaussian
    torch.div(logits, weights, out=logits)
    return logits[(slice(None), *crop)]


@torch.inference_mode()
def nnunet_fold_logits(networks: Sequence[torch.nn.Module], image: torch.Tensor, **settings) -> torch.Tensor:
    """The folds' float16 logits averaged as nnU-Net does (summed, then divided, in float16)."""
    total = None
    for network in networks:
        logits = nnunet_logits(network, image, **settings)
        total = logits if total is None else total.add_(logits)
    if len(networks) > 1:
        total /= len(networks)
    return total


__all__ = ["nnunet_fold_logits", "nnunet_gaussian", "nnunet_logits"]

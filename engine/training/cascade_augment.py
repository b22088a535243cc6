"""Cascade-only augmentation of the previous stage's segmentation, as nnU-Net v2 does it for 3d_cascade_fullres.

In the cascade the low-resolution stage's segmentation enters the network as extra input channels, one-hot encoded
per foreground label (`previous_stage_onehot`, nnU-Net's MoveSegAsOneHotToDataTransform). During training nnU-Net
corrupts those channels, per sample and after all spatial/intensity augmentation, so the full-resolution network
learns not to trust the coarse segmentation blindly (`augment_previous_stage`; nnUNetTrainer.get_training_transforms,
the `is_cascaded` branch, with batchgeneratorsv2.transforms.nnunet):

1. with probability 0.4, ApplyRandomBinaryOperatorTransform(strel_size=(1, 8), p_per_label=1): in a random channel
   order, every channel gets one of binary dilation / erosion / closing / opening, picked uniformly, with a ball
   (3-D) or disk (2-D) of radius uniform in [1, 8) built as skimage.morphology.ball / disk build it; voxels a
   channel gains are cleared in the other channels, so the channels stay mutually exclusive;
2. with probability 0.2, RemoveRandomConnectedComponentFromOneHotEncodingTransform(fill_with_other_class_p=0,
   dont_do_if_covers_more_than_x_percent=0.15, p_per_label=1): in a random channel order, every non-empty channel
   loses one connected component (full connectivity), picked uniformly among those strictly smaller than 15% of the
   patch's voxels; the removed voxels become background.

All randomness comes from the caller's numpy Generator, so a seed reproduces the output (nnU-Net uses the global
numpy/torch generators; the distributions are the same, the streams are not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

BINARY_OPERATORS = ("dilation", "erosion", "closing", "opening")


def previous_stage_onehot(segmentation: torch.Tensor, foreground_labels: Sequence[int]) -> torch.Tensor:
    """(B, 1, *S) integer label map -> (B, K, *S) float32 one-hot, channel k = (segmentation == foreground_labels[k]).

    Background (and any value not listed) gets no channel, as in nnU-Net's MoveSegAsOneHotToDataTransform.
    """
    if segmentation.ndim not in (4, 5) or segmentation.shape[1] != 1:
        raise ValueError(f"segmentation must be (B, 1, *S) with 2 or 3 spatial axes, got {tuple(segmentation.shape)}")
    if segmentation.is_floating_point() or segmentation.is_complex():
        raise TypeError(f"segmentation must hold integer labels, got {segmentation.dtype}")
    labels = [int(label) for label in foreground_labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"foreground_labels must be distinct, got {labels}")
    if not labels:
        return torch.zeros(
            (segmentation.shape[0], 0, *segmentation.shape[2:]), dtype=torch.float32, device=segmentation.device
        )
    values = torch.tensor(labels, dtype=segmentation.dtype, device=segmentation.device)
    # broadcast (B, 1, *S) against (1, K, 1...) so each channel compares with its own label, in the given order
    return (segmentation == values.view(1, -1, *([1] * (segmentation.ndim - 2)))).to(torch.float32)


def structuring_element(radius: float, spatial_dims: int) -> np.ndarray:
    """skimage.morphology.disk(radius) (2-D) or ball(radius) (3-D) as bool, for a float radius, as nnU-Net calls them.

    Both are reproduced with the same numpy grid calls, so that float radii give the identical (sometimes even-sized
    and, for the disk, off-centre) element: disk samples np.arange(-r, r + 1), ball int(2r + 1) points on [-r, r].
    """
    r = float(radius)
    if spatial_dims == 2:
        grid = np.arange(-r, r + 1)
        x, y = np.meshgrid(grid, grid)
        return x**2 + y**2 <= r**2
    if spatial_dims == 3:
        n = 2 * r + 1
        z, y, x = np.mgrid[-r : r : n * 1j, -r : r : n * 1j, -r : r : n * 1j]
        return x**2 + y**2 + z**2 <= r * r
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _dilate(mask: torch.Tensor, strel: torch.Tensor) -> torch.Tensor:
    """nnU-Net's binary_dilation_torch: 'same' cross-correlation with the element (FFT), zero outside the patch.

    Correlation, not convolution, and (k - 1) // 2 padding in front, so even-sized or asymmetric elements are
    applied with nnU-Net's offsets. FFT keeps radius-8 balls cheap on CPU and GPU alike.
    """
    lo = [(k - 1) // 2 for k in strel.shape]
    pad: list[int] = []
    for k, before in zip(reversed(strel.shape), reversed(lo)):
        pad += [before, k - 1 - before]
    signal = F.pad(mask.to(torch.float32), pad)
    dims = tuple(range(signal.ndim))
    size = signal.shape
    spectrum = (
        torch.fft.rfftn(signal, s=size, dim=dims) * torch.fft.rfftn(strel.to(torch.float32), s=size, dim=dims).conj()
    )
    full = torch.fft.irfftn(spectrum, s=size, dim=dims)
    # no circular wrap-around reaches the first S outputs: the signal carries k - 1 zeros of padding
    out = full[tuple(slice(0, s) for s in mask.shape)]
    # the overlap counts are integers up to FFT round-off; nnU-Net rounds and tests > 0
    return torch.round(out) > 0


def _erode(mask: torch.Tensor, strel: torch.Tensor) -> torch.Tensor:
    # nnU-Net erodes as the complement's dilation, so outside the patch counts as foreground: no erosion from the border
    return ~_dilate(~mask, strel)


def apply_binary_operator(mask: torch.Tensor, operator: str, radius: float) -> torch.Tensor:
    """One of nnU-Net's four operators on a bool (*S) mask with structuring_element(radius); returns bool (*S).

    Closing is erosion of the dilation and opening dilation of the erosion, with _dilate/_erode's border conventions.
    """
    strel = torch.from_numpy(structuring_element(radius, mask.ndim)).to(mask.device)
    if operator == "dilation":
        return _dilate(mask, strel)
    if operator == "erosion":
        return _erode(mask, strel)
    if operator == "closing":
        return _erode(_dilate(mask, strel), strel)
    if operator == "opening":
        return _dilate(_erode(mask, strel), strel)
    raise ValueError(f"operator must be one of {BINARY_OPERATORS}, got {operator!r}")


def _random_binary_operators(
    sample: torch.Tensor, generator: np.random.Generator, strel_size: tuple[float, float]
) -> None:
    """ApplyRandomBinaryOperatorTransform (p_per_label=1) on one (K, *S) bool sample, in place."""
    num_channels = sample.shape[0]
    # draw everything first, as nnU-Net's get_parameters does: channel order, then operators, then radii
    order = generator.permutation(num_channels)
    operators = [BINARY_OPERATORS[generator.integers(len(BINARY_OPERATORS))] for _ in order]
    low, high = strel_size
    radii = [low if low == high else float(generator.uniform(low, high)) for _ in order]
    for channel, operator, radius in zip(order.tolist(), operators, radii):
        before = sample[channel]
        after = apply_binary_operator(before, operator, radius)
        # what this channel gained is taken from the others; what it lost becomes background
        gained = after & ~before
        others = [c for c in range(num_channels) if c != channel]
        if others:
            sample[others] &= ~gained
        sample[channel] = after


def _remove_random_components(sample: np.ndarray, generator: np.random.Generator, max_fraction: float) -> None:
    """RemoveRandomConnectedComponentFromOneHotEncodingTransform (fill p 0, p_per_label=1) on (K, *S) bool, in place."""
    spatial = sample.shape[1:]
    num_voxels = int(np.prod(spatial, dtype=np.uint64))
    # skimage.measure.label's default connectivity is the full one (8 in 2-D, 26 in 3-D)
    structure = ndimage.generate_binary_structure(len(spatial), len(spatial))
    for channel in generator.permutation(sample.shape[0]).tolist():
        mask = sample[channel]
        if not mask.any():
            continue
        labelled, count = ndimage.label(mask, structure=structure)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
        # strictly smaller than the fraction of the whole patch, as nnU-Net compares
        candidates = [i + 1 for i, size in enumerate(sizes.tolist()) if size < num_voxels * max_fraction]
        if candidates:
            mask[labelled == candidates[generator.integers(len(candidates))]] = False


def augment_previous_stage(
    onehot: torch.Tensor,
    *,
    generator: np.random.Generator,
    p_binary_operator: float = 0.4,
    strel_size: tuple[float, float] = (1, 8),
    p_remove_component: float = 0.2,
    max_component_fraction: float = 0.15,
) -> torch.Tensor:
    """nnU-Net's cascade augmentation of (B, K, *S) one-hot previous-stage channels; returns a new tensor.

    Per sample: with probability `p_binary_operator` a random binary operator per channel, then with probability
    `p_remove_component` one random connected component (< `max_component_fraction` of the voxels) removed per
    channel. Any nonzero input counts as foreground; augmented samples come back as 0/1, the others as given, in the
    input's dtype and device. The input is not modified. Morphology runs on the input's device (torch FFT); component
    labelling on the CPU (scipy).
    """
    if onehot.ndim not in (4, 5):
        raise ValueError(f"onehot must be (B, K, *S) with 2 or 3 spatial axes, got {tuple(onehot.shape)}")
    for name, p in (("p_binary_operator", p_binary_operator), ("p_remove_component", p_remove_component)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    low, high = (float(s) for s in strel_size)
    if not 0 < low <= high:
        raise ValueError(f"strel_size must be (low, high) with 0 < low <= high, got {tuple(strel_size)}")
    result = onehot.clone()
    if onehot.shape[1] == 0:
        return result
    for b in range(onehot.shape[0]):
        # the two coin flips are independent, as nnU-Net's two RandomTransform wrappers are
        do_binary = generator.random() < p_binary_operator
        do_remove = generator.random() < p_remove_component
        if not (do_binary or do_remove):
            continue
        sample = onehot[b] != 0
        if do_binary:
            _random_binary_operators(sample, generator, (low, high))
        if do_remove:
            cpu = sample.cpu().numpy()
            _remove_random_components(cpu, generator, max_component_fraction)
            sample = torch.from_numpy(cpu).to(onehot.device)
        result[b] = sample.to(onehot.dtype)
    return result

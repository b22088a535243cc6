"""U-Net topology from spacing and patch size, and the network's activation-memory estimate.

nnU-Net sizes patches and batches against a *count of feature-map elements* the network produces for one
sample, not against measured memory. Reproducing its plans therefore needs the same pooling rule and the
same element count, which `dynamic_network_architectures` computes by walking its modules. Here both are
closed-form arithmetic, so planning needs neither torch nor a network instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_FEATURE_MAP_EDGE = 4  # no bottleneck edge below this many voxels


@dataclass(frozen=True)
class Topology:
    """Pooling and convolution layout of an encoder, and the patch size it can take."""

    strides: tuple[tuple[int, ...], ...]  # per stage; the first stage never downsamples
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage, 1 or 3 per axis
    patch_size: tuple[int, ...]  # padded to a multiple of `divisor`
    divisor: tuple[int, ...]  # 2 ** (number of poolings) per axis

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def _pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """Smallest multiple of `divisor` that is >= shape on each axis (a float shape is rounded up too)."""
    padded = []
    for size, div in zip(shape, divisor):
        remainder = size % div
        padded.append(int(size + div - remainder) - (div if remainder == 0 else 0))
    return tuple(padded)


def pool_and_conv_layout(
    spacing: Sequence[float], patch_size: Sequence[float], *, min_edge: int = MIN_FEATURE_MAP_EDGE
) -> Topology:
    """Pool every axis whose spacing is within 2x of the finest one, until the feature map gets too small.

    Anisotropic axes are left alone (stride 1, kernel 1) until downsampling the fine axes has brought them
    within a factor 2; an axis stops pooling once its edge would drop below 2 * `min_edge`, and pooling a
    single remaining axis needs 3 * `min_edge`. This is nnU-Net's rule, so that the same data gives the
    same network.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    n_pool = [0] * dim
    kernel = [1] * dim
    while True:
        poolable = [a for a in range(dim) if current_size[a] >= 2 * min_edge]
        if not poolable:
            break
        finest = min(current_spacing[a] for a in poolable)
        poolable = [a for a in poolable if current_spacing[a] / finest < 2]
        if len(poolable) == 1 and current_size[poolable[0]] < 3 * min_edge:
            break
        if not poolable:
            break
        overall_finest = min(current_spacing)
        for a in range(dim):
            if kernel[a] != 3 and current_spacing[a] / overall_finest < 2:
                kernel[a] = 3
        stride = [1] * dim
        for a in poolable:
            stride[a] = 2
            n_pool[a] += 1
            current_spacing[a] *= 2
            current_size[a] = math.ceil(current_size[a] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # the bottleneck always convolves every axis
    divisor = tuple(2**n for n in n_pool)
    return Topology(
        strides=tuple(strides),
        kernel_sizes=tuple(kernels),
        patch_size=_pad_to_multiple(patch_size, divisor),
        divisor=divisor,
    )


def features_per_stage(n_stages: int, *, base: int, cap: int) -> tuple[int, ...]:
    """Features double per stage from `base` up to `cap`."""
    return tuple(min(cap, base * 2**i) for i in range(n_stages))


def _elements(channels: int, size: Sequence[int]) -> int:
    return int(channels) * math.prod(int(s) for s in size)


def _downsample(size: Sequence[int], stride: Sequence[int]) -> list[int]:
    return [int(s) // int(k) for s, k in zip(size, stride)]


def feature_map_elements(
    patch_size: Sequence[int],
    *,
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    n_conv_encoder: Sequence[int],
    n_conv_decoder: Sequence[int],
    num_classes: int,
    residual: bool,
    deep_supervision: bool = False,
) -> int:
    """Number of elements in every conv output of the U-Net for one sample: nnU-Net's memory proxy.

    Counts, as `compute_conv_feature_map_size` of dynamic_network_architectures does:
    plain encoder: each conv of a stage (the first one strided); residual encoder: a stem conv, then per
    residual block two convs plus the projection on the skip path when the block changes channels or size;
    decoder: per stage its convs, the transposed conv, and the segmentation head (only the last one unless
    deep supervision; the planner estimates without it).
    """
    size = [int(s) for s in patch_size]
    total = 0
    if residual:
        total += _elements(features[0], size)  # stem: one conv, stride 1, to features[0]
        in_channels = features[0]
    else:
        in_channels = None
    for stage, stride in enumerate(strides):
        out = features[stage]
        after = _downsample(size, stride)
        if residual:
            for block in range(n_conv_encoder[stage]):
                block_in = in_channels if block == 0 else out
                block_size = size if block == 0 else after
                total += 2 * _elements(out, after)
                if block_in != out or list(block_size) != list(after):
                    total += _elements(out, after)
            in_channels = out
        else:
            total += n_conv_encoder[stage] * _elements(out, after)
        size = after
    skip_sizes = []
    size = [int(s) for s in patch_size]
    for stride in strides[:-1]:
        size = _downsample(size, stride)
        skip_sizes.append(size)
    n_decoder = len(strides) - 1
    for s in range(n_decoder):
        skip = skip_sizes[-(s + 1)]
        channels = features[-(s + 2)]
        total += n_conv_decoder[s] * _elements(channels, skip)  # conv blocks
        total += _elements(channels, skip)  # transposed conv
        if deep_supervision or s == n_decoder - 1:
            total += _elements(num_classes, skip)
    return total


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> np.ndarray:
    """A patch with the aspect ratio of the spacing's inverse and 256^3 (3d) or 2048^2 (2d) voxels, clipped to the median shape.

    Starting large and shrinking (see rules.py) finds the biggest patch that fits; numpy arithmetic keeps
    the rounding identical to nnU-Net's.
    """
    inverse = 1 / np.array(spacing, dtype=np.float64)
    if len(spacing) == 3:
        start = [round(i) for i in inverse * (256**3 / np.prod(inverse)) ** (1 / 3)]
    elif len(spacing) == 2:
        start = [round(i) for i in inverse * (2048**2 / np.prod(inverse)) ** (1 / 2)]
    else:
        raise ValueError(f"spacing must have 2 or 3 axes, got {list(spacing)}")
    return np.array([min(i, j) for i, j in zip(start, median_shape)])

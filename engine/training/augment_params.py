"""Augmentation settings and the random draw of per-sample parameters.

Drawing is kept apart from applying (TorchIO's lesson): `draw_params` turns an `AugmentConfig` and a seeded
`torch.Generator` into an `AugmentParams` of small CPU tensors, and `augment_apply.apply_augmentation` is a
deterministic function of those parameters and the batch. A batch's augmentation is therefore reproducible from its
seed, loggable (`AugmentParams.to_dict`), and the draw never touches the accelerator.

Defaults and semantics follow nnU-Net v2's default training transforms (`nnUNetTrainer.get_training_transforms`
with batchgeneratorsv2): every probability is "per sample", and per-channel draws happen inside a sample that was
selected. Axes are named (z, y, x) = (0, 1, 2); 2-D data uses (y, x) = (1, 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from voxelbase.spec.augment import AugmentConfig, Range, mirror_axes_for


def use_dummy_2d(patch_size: Sequence[int], config: AugmentConfig) -> bool:
    """nnU-Net's rule: augment a 3-D patch slice-wise when its first (through-plane) axis is much shorter."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > config.anisotropy_threshold


def rotation_range_deg(patch_size: Sequence[int], config: AugmentConfig, *, dummy_2d: bool) -> float:
    """The symmetric rotation range nnU-Net uses for this patch geometry."""
    if len(patch_size) == 2:
        elongated = max(patch_size) / min(patch_size) > 1.5
        return config.rotation_deg_2d_elongated if elongated else config.rotation_deg_2d
    return config.rotation_deg_dummy_2d if dummy_2d else config.rotation_deg


def initial_patch_size(patch_size: Sequence[int], config: AugmentConfig, *, dummy_2d: bool) -> tuple[int, ...]:
    """The larger patch the loader reads, so rotation and scaling resample real context instead of padding.

    Reproduces nnU-Net's `get_patch_size`: the patch-size vector is rotated about each axis separately by the
    largest angle (capped at 90 deg), the per-axis maximum of the absolute coordinates is kept, divided by the
    minimum scale and truncated. For 2-D-in-3-D the through-plane extent stays the patch size.
    """
    rot = math.radians(min(rotation_range_deg(patch_size, config, dummy_2d=dummy_2d), 90.0))
    c, s = math.cos(rot), math.sin(rot)
    coords = np.asarray(patch_size, dtype=float)
    final = coords.copy()
    if len(coords) == 3:
        # row vector times rotation matrix, as batchgenerators' rotate_coords_3d does
        rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        for rot_m in (rx, ry, rz):
            final = np.maximum(final, np.abs(coords @ rot_m))
    elif len(coords) == 2:
        final = np.maximum(final, np.abs(coords @ np.array([[c, -s], [s, c]])))
    else:
        raise ValueError(f"patch_size must have 2 or 3 axes, got {tuple(patch_size)}")
    final = (final / config.initial_patch_min_scale).astype(int)
    if dummy_2d:
        final[0] = patch_size[0]
    return tuple(int(v) for v in final)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's drawn augmentation: per-sample flags and values, all CPU tensors (B = batch, C = channels).

    Values of transforms a sample does not get are neutral (angle 0, scale 1, multiplier 1, ...), and the `do_*`
    flags say which were drawn, so `apply_augmentation` can skip work and keep untouched samples bit-identical.
    `angles` has 3 columns (rotation about z, y, x) for full 3-D and 1 (in-plane) for 2-D and 2-D-in-3-D.
    """

    spatial_dims: int
    dummy_2d: bool
    channels: int
    do_rotation: torch.Tensor  # (B,) bool
    angles: torch.Tensor  # (B, 3 or 1) radians
    do_scaling: torch.Tensor  # (B,) bool
    scales: torch.Tensor  # (B, axes resampled: 3, or 2 in-plane)
    do_noise: torch.Tensor  # (B,) bool
    noise_std: torch.Tensor  # (B,)
    noise_seed: int
    blur_sigma: torch.Tensor  # (B, C, spatial_dims), 0 where a channel is not blurred
    brightness: torch.Tensor  # (B, C) multipliers
    do_contrast: torch.Tensor  # (B,) bool
    contrast: torch.Tensor  # (B, C)
    lowres_zoom: torch.Tensor  # (B, C, spatial_dims), 1 where not simulated
    do_gamma_inverted: torch.Tensor  # (B,) bool
    gamma_inverted: torch.Tensor  # (B, C)
    do_gamma: torch.Tensor  # (B,) bool
    gamma: torch.Tensor  # (B, C)
    mirror: torch.Tensor  # (B, spatial_dims) bool
    gamma_retain_stats: bool = True
    contrast_preserve_range: bool = True

    @property
    def batch_size(self) -> int:
        return int(self.do_rotation.shape[0])

    @property
    def do_spatial(self) -> torch.Tensor:
        return self.do_rotation | self.do_scaling

    def to_dict(self) -> dict:
        """Plain Python values (nested lists), for logs and reproducing a batch."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, torch.Tensor) else v
        return out


def _uniform(lo: float, hi: float, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)


def _around_one(rng: Range, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """batchgeneratorsv2's BGContrast: half the draws below 1, half above, so shrinking and growing are equally likely."""
    lo, hi = rng
    below = _uniform(lo, min(1.0, hi), shape, g)
    above = _uniform(max(lo, 1.0), hi, shape, g)
    pick_below = torch.rand(shape, generator=g) < 0.5
    if lo >= 1:
        pick_below = torch.zeros(shape, dtype=torch.bool)
    return torch.where(pick_below, below, above)


def _flags(p: float, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) < p


def draw_params(
    config: AugmentConfig,
    *,
    batch_size: int,
    spatial_dims: int,
    generator: torch.Generator,
    dummy_2d: bool = False,
    channels: int = 1,
    patch_size: Sequence[int] | None = None,
) -> AugmentParams:
    """Draw one batch's augmentation parameters from `generator` (a CPU generator; same seed, same params).

    `patch_size` (the final patch) selects nnU-Net's rotation range for 2-D patches (+-15 deg when elongated);
    without it the configured default for the dimensionality is used.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if dummy_2d and spatial_dims != 3:
        raise ValueError("dummy_2d (2-D augmentation of 3-D patches) needs spatial_dims=3")
    b, c, g = batch_size, channels, generator
    if patch_size is not None:
        rot = rotation_range_deg(patch_size, config, dummy_2d=dummy_2d)
    else:
        rot = config.rotation_deg_2d if spatial_dims == 2 else rotation_range_deg((1, 1, 1), config, dummy_2d=dummy_2d)
    rot = math.radians(rot)
    planar = spatial_dims == 2 or dummy_2d
    n_angles, n_scales = (1, 2) if planar else (3, 3)

    do_rotation = _flags(config.p_rotation, (b,), g)
    do_scaling = _flags(config.p_scaling, (b,), g)
    angles = _uniform(-rot, rot, (b, n_angles), g)
    angles = torch.where(_flags(config.p_rotation_per_axis, (b, n_angles), g), angles, 0.0)
    angles = torch.where(do_rotation[:, None], angles, 0.0)
    independent = _flags(config.p_independent_scale_per_axis, (b,), g)
    scales = _uniform(*config.scaling, (b, n_scales), g)
    scales = torch.where(independent[:, None], scales, scales[:, :1])
    scales = torch.where(do_scaling[:, None], scales, 1.0)

    do_noise = _flags(config.p_noise, (b,), g)
    noise_std = torch.where(do_noise, _uniform(*config.noise_variance, (b,), g), 0.0)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=g).item())

    blur_on = _flags(config.p_blur, (b, 1), g) & _flags(config.p_blur_per_channel, (b, c), g)
    blur_sigma = torch.where(blur_on[..., None], _uniform(*config.blur_sigma, (b, c, spatial_dims), g), 0.0)

    do_brightness = _flags(config.p_brightness, (b, 1), g)
    brightness = torch.where(do_brightness, _around_one(config.brightness, (b, c), g), 1.0)

    do_contrast = _flags(config.p_contrast, (b,), g)
    contrast = torch.where(do_contrast[:, None], _around_one(config.contrast, (b, c), g), 1.0)

    lowres_on = _flags(config.p_lowres, (b, 1), g) & _flags(config.p_lowres_per_channel, (b, c), g)
    zoom = _uniform(*config.lowres_zoom, (b, c, 1), g).expand(b, c, spatial_dims).clone()
    if dummy_2d:
        zoom[..., 0] = 1.0  # nnU-Net's ignore_axes: never degrade the through-plane axis slice-wise
    lowres_zoom = torch.where(lowres_on[..., None], zoom, 1.0)

    do_gamma_inverted = _flags(config.p_gamma_inverted, (b,), g)
    gamma_inverted = torch.where(do_gamma_inverted[:, None], _around_one(config.gamma, (b, c), g), 1.0)
    do_gamma = _flags(config.p_gamma, (b,), g)
    gamma = torch.where(do_gamma[:, None], _around_one(config.gamma, (b, c), g), 1.0)

    allowed = torch.zeros(spatial_dims, dtype=torch.bool)
    allowed[list(mirror_axes_for(spatial_dims, config))] = True
    mirror = _flags(config.p_mirror, (b, spatial_dims), g) & allowed

    f32 = torch.float32
    return AugmentParams(
        spatial_dims=spatial_dims,
        dummy_2d=dummy_2d,
        channels=c,
        do_rotation=do_rotation,
        angles=angles.to(f32),
        do_scaling=do_scaling,
        scales=scales.to(f32),
        do_noise=do_noise,
        noise_std=noise_std.to(f32),
        noise_seed=noise_seed,
        blur_sigma=blur_sigma.to(f32),
        brightness=brightness.to(f32),
        do_contrast=do_contrast,
        contrast=contrast.to(f32),
        lowres_zoom=lowres_zoom.to(f32),
        do_gamma_inverted=do_gamma_inverted,
        gamma_inverted=gamma_inverted.to(f32),
        do_gamma=do_gamma,
        gamma=gamma.to(f32),
        mirror=mirror,
        gamma_retain_stats=config.gamma_retain_stats,
        contrast_preserve_range=config.contrast_preserve_range,
    )

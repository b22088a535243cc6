"""The `[augment]` spec section: every probability and range of nnU-Net's training augmentation.

A spec section like the others, so it lives with the spec; drawing and applying the augmentation are training's
(`voxelbase.training.augment_params`, `voxelbase.training.augment_apply`). Test-time mirroring reads `mirror_axes` too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    """Every probability and range of the training augmentation, with nnU-Net v2's defaults.

    Rotation ranges are in degrees and symmetric (drawn from [-r, r]). nnU-Net picks the range from the patch
    geometry: full 3-D patches rotate +-30 deg about each axis, 2-D-in-3-D (anisotropic) patches +-180 deg in
    plane, 2-D patches +-180 deg, or +-15 deg when max(patch)/min(patch) > 1.5.
    """

    # spatial: one affine resampling (rotation and scaling) around the patch centre
    p_rotation: float = 0.2
    rotation_deg: float = 30.0
    rotation_deg_dummy_2d: float = 180.0
    rotation_deg_2d: float = 180.0
    rotation_deg_2d_elongated: float = 15.0
    p_rotation_per_axis: float = 1.0
    p_scaling: float = 0.2
    scaling: Range = (0.7, 1.4)  # > 1 samples a larger region: objects shrink
    p_independent_scale_per_axis: float = 0.0
    # 2-D-in-3-D: used when max(patch) / patch[0] > anisotropy_threshold (nnU-Net's ANISO_THRESHOLD)
    anisotropy_threshold: float = 3.0
    # nnU-Net sizes the read patch for a minimum scale of 0.85 (not scaling[0]); kept for parity
    initial_patch_min_scale: float = 0.85
    # intensity
    p_noise: float = 0.1
    noise_variance: Range = (0.0, 0.1)  # nnU-Net's name; the drawn value is used as the noise std, as there
    p_blur: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    p_blur_per_channel: float = 0.5
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)
    contrast_preserve_range: bool = True
    p_lowres: float = 0.25
    lowres_zoom: Range = (0.5, 1.0)
    p_lowres_per_channel: float = 0.5
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: Range = (0.7, 1.5)
    gamma_retain_stats: bool = True
    # mirroring, each allowed axis with p_mirror independently
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_mirror: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name}: probability {value} is outside [0, 1]")
            if f.type == "Range":
                lo, hi = value
                if lo > hi:
                    raise ValueError(f"{f.name}: lower bound {lo} exceeds upper bound {hi}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes: {list(self.mirror_axes)} must name axes 0 (z), 1 (y), 2 (x)")
        if self.scaling[0] <= 0 or self.initial_patch_min_scale <= 0:
            raise ValueError("scaling: factors must be positive")


def mirror_axes_for(spatial_dims: int, config: AugmentConfig) -> tuple[int, ...]:
    """The configured mirror axes as indices into the spatial dimensions of a `spatial_dims`-D patch."""
    offset = 3 - spatial_dims
    return tuple(a - offset for a in sorted(set(config.mirror_axes)) if a >= offset)

"""Batched data augmentation for training: settings, parameter draws and their application.

Import from here; the work is split in two modules so that drawing random parameters (`augment_params`, CPU,
seeded) stays separate from applying them (`augment_apply`, batched tensor ops on the batch's device).

Typical use in a training step::

    config = spec.augment
    dummy_2d = use_dummy_2d(patch_size, config)
    read_size = initial_patch_size(patch_size, config, dummy_2d=dummy_2d)   # what the loader reads
    params = draw_params(config, batch_size=b, spatial_dims=3, generator=g, dummy_2d=dummy_2d,
                         channels=c, patch_size=patch_size)
    image, label = apply_augmentation(params, image.to(dev), label.to(dev), patch_size=patch_size,
                                      num_classes=k)
"""

from voxelbase.training.augment_apply import affine_matrices, apply_augmentation
from voxelbase.training.augment_params import (
    AugmentConfig,
    AugmentParams,
    draw_params,
    initial_patch_size,
    mirror_axes_for,
    rotation_range_deg,
    use_dummy_2d,
)

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "affine_matrices",
    "apply_augmentation",
    "draw_params",
    "initial_patch_size",
    "mirror_axes_for",
    "rotation_range_deg",
    "use_dummy_2d",
]

"""Batched augmentation: nnU-Net's defaults, reproducibility, image/label alignment, each transform vs a reference."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from voxelbase.training.augment import (
    AugmentConfig,
    apply_augmentation,
    draw_params,
    initial_patch_size,
    mirror_axes_for,
    use_dummy_2d,
)

PROBS = ("p_rotation", "p_scaling", "p_noise", "p_blur", "p_brightness", "p_contrast", "p_lowres", "p_gamma")
OFF = AugmentConfig(**{p: 0.0 for p in (*PROBS, "p_gamma_inverted", "p_mirror")})


def only(**kwargs) -> AugmentConfig:
    return dataclasses.replace(OFF, **kwargs)


def draw(config, b=2, dims=3, seed=0, **kw):
    return draw_params(config, batch_size=b, spatial_dims=dims, generator=torch.Generator().manual_seed(seed), **kw)


def sphere_batch(b: int, shape: tuple[int, ...], radius: float, center_shift: float = 2.0):
    """Bright (1) off-centre spheres on dark (0) background, partial volume smoothed; labels = sphere."""
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    centre = [(s - 1) / 2 + center_shift * (i + 1) for i, s in enumerate(shape)]
    dist = torch.sqrt(sum((a - c) ** 2 for a, c in zip(axes, centre)))
    image = torch.clamp(radius + 0.5 - dist, 0, 1)
    label = (dist <= radius).to(torch.int16)
    return image.expand(b, 1, *shape).clone(), label.expand(b, 1, *shape).clone()


def test_defaults_are_nnunet_v2_training_transforms():
    """Numbers from nnUNetTrainer.get_training_transforms / configure_rotation_dummyDA_... (nnU-Net v2.5+)."""
    c = AugmentConfig()
    assert (c.p_rotation, c.rotation_deg, c.rotation_deg_dummy_2d, c.p_rotation_per_axis) == (0.2, 30.0, 180.0, 1.0)
    assert (c.rotation_deg_2d, c.rotation_deg_2d_elongated) == (180.0, 15.0)
    assert (c.p_scaling, c.scaling, c.p_independent_scale_per_axis) == (0.2, (0.7, 1.4), 0.0)
    assert (c.anisotropy_threshold, c.initial_patch_min_scale) == (3.0, 0.85)
    assert (c.p_noise, c.noise_variance) == (0.1, (0.0, 0.1))
    assert (c.p_blur, c.blur_sigma, c.p_blur_per_channel) == (0.2, (0.5, 1.0), 0.5)
    assert (c.p_brightness, c.brightness) == (0.15, (0.75, 1.25))
    assert (c.p_contrast, c.contrast, c.contrast_preserve_range) == (0.15, (0.75, 1.25), True)
    assert (c.p_lowres, c.lowres_zoom, c.p_lowres_per_channel) == (0.25, (0.5, 1.0), 0.5)
    assert (c.p_gamma_inverted, c.p_gamma, c.gamma, c.gamma_retain_stats) == (0.1, 0.3, (0.7, 1.5), True)
    assert (c.mirror_axes, c.p_mirror) == ((0, 1, 2), 0.5)
    with pytest.raises(ValueError, match="p_blur"):
        AugmentConfig(p_blur=1.5)


def test_initial_patch_size_and_dummy_2d_match_nnunet():
    """Reference values computed with nnU-Net v2's get_patch_size and its trainer's dummy-2D rule."""
    c = AugmentConfig()
    expected = {
        (128, 128, 128): ((205, 205, 205), False),
        (20, 160, 160): ((20, 188, 188), True),
        (64, 96, 80): ((121, 144, 119), False),
        (40, 192, 160): ((40, 225, 225), True),
        (56, 224, 192): ((56, 263, 263), True),
        (192, 160): ((225, 225), False),
        (256, 256): ((301, 301), False),
        (300, 100): ((371, 117), False),
    }
    for patch, (initial, dummy) in expected.items():
        assert use_dummy_2d(patch, c) is dummy, patch
        assert initial_patch_size(patch, c, dummy_2d=dummy) == initial, patch
    assert mirror_axes_for(3, c) == (0, 1, 2) and mirror_axes_for(2, c) == (0, 1)
    assert mirror_axes_for(2, dataclasses.replace(c, mirror_axes=(0, 2))) == (1,)


def test_draw_probabilities_follow_the_config():
    p = draw(AugmentConfig(), b=4000, channels=2, seed=3)
    for flag, expected in [(p.do_rotation, 0.2), (p.do_scaling, 0.2), (p.do_noise, 0.1), (p.do_gamma, 0.3)]:
        assert abs(flag.float().mean().item() - expected) < 0.03
    assert abs((p.blur_sigma[..., 0] > 0).float().mean().item() - 0.1) < 0.02  # 0.2 per sample x 0.5 per channel
    assert abs(p.mirror.float().mean().item() - 0.5) < 0.03
    assert p.angles.abs().max().item() <= math.radians(30) + 1e-6
    scaled = p.scales[p.do_scaling]
    assert torch.all(scaled[:, 0:1] == scaled) and scaled.min() >= 0.7 and scaled.max() <= 1.4  # one factor per sample
    b = p.brightness[p.brightness != 1]
    assert b.min() >= 0.75 and b.max() <= 1.25 and abs((b < 1).float().mean().item() - 0.5) < 0.1
    d2 = draw(AugmentConfig(p_rotation=1, p_lowres=1, p_lowres_per_channel=1), b=50, dummy_2d=True)
    assert d2.angles.shape == (50, 1) and d2.scales.shape == (50, 2)
    assert torch.all(d2.lowres_zoom[..., 0] == 1) and torch.any(d2.lowres_zoom[..., 1] < 1)


def test_same_seed_same_params_and_output():
    config = AugmentConfig(**{p: 0.8 for p in PROBS})
    image, label = sphere_batch(3, (20, 22, 18), 5)
    image = image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    p1, p2, p3 = draw(config, b=3, seed=7), draw(config, b=3, seed=7), draw(config, b=3, seed=8)
    assert p1.to_dict() == p2.to_dict() and p1.to_dict() != p3.to_dict()
    out1 = apply_augmentation(p1, image, label, patch_size=(16, 16, 16))
    out2 = apply_augmentation(p2, image, label, patch_size=(16, 16, 16))
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    out3 = apply_augmentation(p3, image, label, patch_size=(16, 16, 16))
    assert not torch.equal(out1[0], out3[0])


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return (2 * (a & b).sum() / (a.sum() + b.sum())).item()


@pytest.mark.parametrize("dims", [3, 2])
def test_spatial_augmentation_keeps_label_on_bright_voxels(dims):
    patch = (24, 24, 24)[:dims]
    config = only(p_rotation=1.0, p_scaling=1.0, rotation_deg=30.0, rotation_deg_2d=180.0)
    read = initial_patch_size(patch, config, dummy_2d=False)
    image, label = sphere_batch(6, read, radius=7.0)
    params = draw(config, b=6, dims=dims, seed=11)
    assert params.do_spatial.all() and (params.angles.abs() > 0.01).any()
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=patch)
    assert out_img.shape == (6, 1, *patch) and out_lbl.shape == (6, 1, *patch) and out_lbl.dtype == torch.int16
    for i in range(6):
        inside, lbl = out_img[i, 0][out_lbl[i, 0] == 1], out_lbl[i, 0] == 1
        assert lbl.sum() > 20
        assert inside.mean() > 0.85 and out_img[i, 0][~lbl].mean() < 0.05
        assert _dice(lbl, out_img[i, 0] > 0.5) > 0.95  # one voxel of misalignment gives ~0.86-0.92
    # the spheres moved (off-centre sphere rotated), so this is not the identity
    crop, _ = apply_augmentation(draw(OFF, b=6, dims=dims), image, label, patch_size=patch)
    assert not torch.allclose(crop, out_img, atol=1e-3)


def test_dummy_2d_rotates_in_plane_only():
    patch = (6, 24, 24)
    config = only(p_rotation=1.0, p_scaling=1.0)
    assert use_dummy_2d(patch, config)
    read = initial_patch_size(patch, config, dummy_2d=True)
    image, label = sphere_batch(4, read, radius=8.0, center_shift=0.0)
    # a z-ramp: in-plane augmentation must leave every slice's z-intensity where it was
    image = image + torch.arange(read[0], dtype=torch.float32).view(1, 1, -1, 1, 1) * 10
    params = draw(config, b=4, seed=5, dummy_2d=True, patch_size=patch)
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=patch)
    assert out_img.shape == (4, 1, *patch)
    for z in range(patch[0]):
        lbl = out_lbl[:, 0, z] == 1
        vals = out_img[:, 0, z][lbl]
        assert torch.allclose(vals.round(), torch.full_like(vals, 10 * z + 1), atol=1)


def test_rotation_by_90_degrees_is_rot90():
    """An independent geometric check: 90 deg about z maps the (y, x) plane like torch.rot90."""
    image = torch.rand(1, 2, 9, 12, 12)
    label = (torch.rand(1, 1, 9, 12, 12) * 3).long()
    base = draw(only(p_rotation=1.0), b=1, channels=2)
    params = dataclasses.replace(base, angles=torch.tensor([[math.pi / 2, 0.0, 0.0]]), scales=torch.ones(1, 3))
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(9, 12, 12))
    rotated = [torch.rot90(image, k, dims=(3, 4)) for k in (1, 3)]
    err = min((out_img - r).abs().max().item() for r in rotated)
    assert err < 1e-4
    assert any(torch.equal(out_lbl, torch.rot90(label, k, dims=(3, 4))) for k in (1, 3))


def test_mirroring_flips_image_and_label_together():
    image = torch.rand(2, 1, 8, 10, 12)
    label = (torch.rand(2, 1, 8, 10, 12) * 3).long()
    params = dataclasses.replace(draw(OFF, b=2), mirror=torch.tensor([[True, False, True], [False, False, False]]))
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(8, 10, 12))
    assert torch.equal(out_img[0], image[0].flip(1).flip(3)) and torch.equal(out_lbl[0], label[0].flip(1).flip(3))
    assert torch.equal(out_img[1], image[1]) and torch.equal(out_lbl[1], label[1])
    flipped = draw(only(p_mirror=1.0), b=1)
    assert flipped.mirror.all()
    restricted = draw(dataclasses.replace(OFF, p_mirror=1.0, mirror_axes=(1, 2)), b=1)
    assert restricted.mirror.tolist() == [[False, True, True]]


def test_zero_probabilities_are_the_identity_apart_from_the_centre_crop():
    image = torch.randn(3, 2, 15, 14, 13)
    label = (torch.rand(3, 1, 15, 14, 13) * 4).to(torch.int8)
    params = draw(OFF, b=3, channels=2)
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(10, 10, 10))
    # nnU-Net's crop: start = size // 2 - patch // 2
    assert torch.equal(out_img, image[:, :, 2:12, 2:12, 1:11])
    assert torch.equal(out_lbl, label[:, :, 2:12, 2:12, 1:11]) and out_lbl.dtype == torch.int8
    # a read patch smaller than the patch is padded: image 0, label 0
    small_img, small_lbl = apply_augmentation(params, image, label + 1, patch_size=(17, 14, 13))
    assert small_img.shape == (3, 2, 17, 14, 13) and torch.equal(small_img[:, :, 1:16], image)
    assert (small_lbl[:, :, 0] == 0).all() and torch.equal(small_lbl[:, :, 1:16], label + 1)


def test_identity_affine_equals_the_crop_when_resampling():
    """A drawn-but-neutral affine (angle 0, scale 1) resamples exactly onto the crop's voxels."""
    image = torch.randn(2, 1, 15, 14, 13)
    label = (torch.rand(2, 1, 15, 14, 13) * 3).long()
    params = dataclasses.replace(draw(only(p_rotation=1.0), b=2), angles=torch.zeros(2, 3))
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(10, 10, 10))
    assert torch.allclose(out_img, image[:, :, 2:12, 2:12, 1:11], atol=1e-5)
    assert torch.equal(out_lbl, label[:, :, 2:12, 2:12, 1:11])


def test_intensity_transforms_leave_the_label_untouched():
    config = only(
        p_noise=1.0, p_blur=1.0, p_blur_per_channel=1.0, p_brightness=1.0, p_contrast=1.0, p_lowres=1.0,
        p_lowres_per_channel=1.0, p_gamma=1.0, p_gamma_inverted=1.0,
    )  # fmt: skip
    image, label = sphere_batch(3, (16, 18, 20), 5)
    image = image.repeat(1, 2, 1, 1, 1)
    params = draw(config, b=3, channels=2, seed=2)
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(16, 18, 20))
    assert torch.equal(out_lbl, label)
    assert not torch.allclose(out_img, image, atol=1e-3)
    assert image.equal(sphere_batch(3, (16, 18, 20), 5)[0].repeat(1, 2, 1, 1, 1))  # input not modified in place


def test_blur_matches_scipy_gaussian_filter():
    image = torch.rand(2, 2, 10, 12, 14, dtype=torch.float64)
    params = draw(only(p_blur=1.0, p_blur_per_channel=1.0), b=2, channels=2, seed=4)
    out, _ = apply_augmentation(params, image, torch.zeros(2, 1, 10, 12, 14, dtype=torch.long), patch_size=(10, 12, 14))
    for b in range(2):
        for c in range(2):
            sigma = params.blur_sigma[b, c].double().numpy()
            ref = image[b, c].numpy()
            for axis, s in enumerate(sigma):
                k = round(s * 6 + 0.5)  # nnU-Net's kernel: nearest odd size to 6 sigma + 0.5
                k = k if k % 2 else (k + 1 if s * 6 + 0.5 - k >= 0 else k - 1)
                ref = ndimage.gaussian_filter1d(ref, s, axis=axis, mode="mirror", truncate=(k // 2) / s)
            assert np.allclose(out[b, c].numpy(), ref, atol=1e-6)


def test_lowres_matches_interpolate_reference():
    image = torch.rand(2, 2, 11, 16, 13)
    params = draw(only(p_lowres=1.0, p_lowres_per_channel=1.0), b=2, channels=2, seed=9)
    out, _ = apply_augmentation(params, image, torch.zeros(2, 1, 11, 16, 13, dtype=torch.long), patch_size=(11, 16, 13))
    for b in range(2):
        for c in range(2):
            shape = [round(n * z) for n, z in zip(image.shape[2:], params.lowres_zoom[b, c].tolist())]
            low = F.interpolate(image[b, c][None, None], shape, mode="nearest-exact")
            ref = F.interpolate(low, image.shape[2:], mode="trilinear")[0, 0]
            assert torch.allclose(out[b, c], ref, atol=1e-5), (b, c, shape)


def test_gamma_contrast_brightness_noise_semantics():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 1, 12, 12, 12, generator=g) * 3 + 1
    label = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    dims = (2, 3, 4)
    gamma, _ = apply_augmentation(draw(only(p_gamma=1.0), seed=1), image, label, patch_size=(12, 12, 12))
    assert torch.allclose(gamma.mean(dims), image.mean(dims), atol=1e-4)
    assert torch.allclose(gamma.std(dims), image.std(dims), atol=1e-4) and not torch.allclose(gamma, image)
    inverted, _ = apply_augmentation(draw(only(p_gamma_inverted=1.0), seed=1), image, label, patch_size=(12, 12, 12))
    assert torch.allclose(inverted.mean(dims), image.mean(dims), atol=1e-4)
    p = draw(only(p_contrast=1.0), seed=3)
    contrast, _ = apply_augmentation(p, image, label, patch_size=(12, 12, 12))
    assert (contrast.amin(dims) >= image.amin(dims) - 1e-6).all() and (
        contrast.amax(dims) <= image.amax(dims) + 1e-6
    ).all()
    p = draw(only(p_brightness=1.0), seed=3)
    bright, _ = apply_augmentation(p, image, label, patch_size=(12, 12, 12))
    assert torch.allclose(bright, image * p.brightness.view(2, 1, 1, 1, 1))
    p = dataclasses.replace(draw(only(p_noise=1.0), seed=3), noise_std=torch.tensor([0.5, 0.0]))
    noisy, _ = apply_augmentation(p, image, label, patch_size=(12, 12, 12))
    assert abs((noisy[0] - image[0]).std().item() - 0.5) < 0.05


def test_negative_labels_and_outside_become_background_and_errors_are_clear():
    image = torch.ones(1, 1, 12, 12, 12)
    label = torch.ones(1, 1, 12, 12, 12, dtype=torch.int16)
    label[..., :2] = -1  # loader padding
    params = dataclasses.replace(draw(only(p_scaling=1.0), b=1), scales=torch.full((1, 3), 1.4))
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(12, 12, 12))
    assert out_lbl.min() == 0 and out_lbl[0, 0, 6, 6, 6] == 1
    assert out_lbl[0, 0, 0, 0, 0] == 0 and out_img[0, 0, 0, 0, 0] < 0.5  # sampled from outside the read patch
    with pytest.raises(ValueError, match="channels"):
        apply_augmentation(draw(OFF, b=1, channels=2), image, label, patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        apply_augmentation(draw(OFF, b=1), image, label, patch_size=(8, 8))


def test_2d_batches_with_all_transforms():
    config = AugmentConfig(**{p: 1.0 for p in PROBS})
    image, label = sphere_batch(4, (30, 30), 8, center_shift=1.0)
    params = draw(config, b=4, dims=2, seed=1, patch_size=(24, 24))
    out_img, out_lbl = apply_augmentation(params, image, label, patch_size=(24, 24), num_classes=2)
    assert out_img.shape == (4, 1, 24, 24) and out_lbl.shape == (4, 1, 24, 24) and torch.isfinite(out_img).all()
    assert set(out_lbl.unique().tolist()) <= {0, 1} and (out_lbl == 1).sum() > 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    config = AugmentConfig(**{p: 1.0 for p in PROBS if p != "p_noise"}, p_noise=0.0)
    image, label = sphere_batch(3, (20, 22, 24), 6)
    params = draw(config, b=3, seed=5, patch_size=(16, 16, 16))
    cpu = apply_augmentation(params, image, label, patch_size=(16, 16, 16))
    gpu = apply_augmentation(params, image.cuda(), label.cuda(), patch_size=(16, 16, 16))
    assert gpu[0].device.type == "cuda" and torch.allclose(gpu[0].cpu(), cpu[0], atol=1e-3)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 0.01
    noisy = draw(only(p_noise=1.0), b=3, seed=5)
    a = apply_augmentation(noisy, image.cuda(), label.cuda(), patch_size=(16, 16, 16))[0]
    b = apply_augmentation(noisy, image.cuda(), label.cuda(), patch_size=(16, 16, 16))[0]
    assert torch.equal(a, b)

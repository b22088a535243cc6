"""Sliding-window inference: tiling, Gaussian weighting, padding, batching, mirroring, 2d slice-wise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from voxelbase.inference.gaussian import compute_steps, gaussian_importance_map
from voxelbase.inference.sliding_window import predict_logits
from voxelbase.networks import build_network


def _pointwise_net(conv_dims: int, in_channels: int = 2, n_classes: int = 3) -> nn.Module:
    """A 1x1 conv with fixed weights: every output voxel depends only on its input voxel, so any tiling, any
    Gaussian weighting and any flip must reproduce the whole-image result."""
    conv = (nn.Conv3d if conv_dims == 3 else nn.Conv2d)(in_channels, n_classes, 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv


class _ShiftX(nn.Module):
    """Output = input shifted by one voxel along x (zero filled): not mirror symmetric, so mirroring must change it
    into the average of a left and a right shift."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[..., :-1] = x[..., 1:]
        return torch.cat([out, -out], dim=1)


def _image(shape, channels=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((channels, *shape), generator=g)


def test_compute_steps_matches_nnunet_examples():
    assert compute_steps([110], [64], 0.5) == [[0, 23, 46]]
    assert compute_steps([64, 100], [64, 64], 0.5) == [[0], [0, 18, 36]]
    assert compute_steps([96], [48], 1.0) == [[0, 48]]
    with pytest.raises(ValueError, match="smaller than the patch"):
        compute_steps([10], [16], 0.5)


def test_gaussian_map_is_centred_max_one_and_positive():
    g = gaussian_importance_map([9, 16, 12])
    assert g.shape == (9, 16, 12)
    assert float(g.max()) == pytest.approx(1.0)
    assert float(g[4, 8, 6]) == pytest.approx(1.0)
    assert float(g.min()) > 0
    assert float(g[0, 0, 0]) < 0.01


def test_tiled_equals_whole_for_pointwise_network():
    net = _pointwise_net(3)
    image = _image((13, 29, 22))
    whole = net(image[None])[0].detach()
    tiled = predict_logits(net, image, patch_size=(8, 12, 10), mirror_axes=None, batch_windows=3)
    assert tiled.shape == (3, 13, 29, 22) and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)
    flat = predict_logits(net, image, patch_size=(8, 12, 10), mirror_axes=None, use_gaussian=False, batch_windows=1)
    torch.testing.assert_close(flat, whole, rtol=1e-5, atol=1e-5)


def test_mirroring_of_symmetric_network_changes_nothing():
    net = _pointwise_net(3)
    image = _image((10, 14, 12))
    plain = predict_logits(net, image, patch_size=(8, 8, 8), mirror_axes=None)
    mirrored = predict_logits(net, image, patch_size=(8, 8, 8), mirror_axes=(0, 1, 2), batch_windows=2)
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-5)


def test_mirroring_averages_flipped_predictions():
    image = _image((4, 6, 8), channels=1)
    out = predict_logits(_ShiftX(), image, patch_size=(4, 6, 8), mirror_axes=(2,))
    left = torch.zeros_like(image)
    left[..., :-1] = image[..., 1:]
    right = torch.zeros_like(image)
    right[..., 1:] = image[..., :-1]
    expected = (left + right) / 2
    torch.testing.assert_close(out[0:1], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1:2], -expected, rtol=1e-5, atol=1e-6)
    # flipping only other axes leaves the x shift as it is
    out_yz = predict_logits(_ShiftX(), image, patch_size=(4, 6, 8), mirror_axes=(0, 1))
    torch.testing.assert_close(out_yz[0:1], left, rtol=1e-5, atol=1e-6)


def test_image_smaller_than_patch_is_padded_and_cropped_back():
    net = _pointwise_net(3)
    image = _image((5, 7, 16))
    out = predict_logits(net, image, patch_size=(8, 8, 8), mirror_axes=None)
    assert out.shape == (3, 5, 7, 16)
    torch.testing.assert_close(out, net(image[None])[0].detach(), rtol=1e-5, atol=1e-5)


def test_2d_network_runs_slice_wise():
    net = _pointwise_net(2)
    image = _image((3, 21, 17))
    out = predict_logits(net, image, patch_size=(8, 8), mirror_axes=(0, 1, 2), batch_windows=5)
    assert out.shape == (3, 3, 21, 17)
    per_slice = torch.stack([net(image[:, z][None])[0] for z in range(3)], dim=1).detach()
    torch.testing.assert_close(out, per_slice, rtol=1e-5, atol=1e-5)
    small = image[:, :, :6]  # smaller than the patch in y: padded per slice, z untouched
    out_small = predict_logits(net, small, patch_size=(8, 8), mirror_axes=None)
    assert out_small.shape == (3, 3, 6, 17)
    torch.testing.assert_close(out_small, per_slice[:, :, :6], rtol=1e-5, atol=1e-5)


def test_unet_prediction_shape_and_batching_invariance():
    arch = {
        "network": "plain_unet",
        "conv_dims": 3,
        "n_stages": 3,
        "features_per_stage": [4, 8, 8],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
    }
    torch.manual_seed(0)
    net = build_network(arch, in_channels=1, num_classes=3, deep_supervision=True)
    image = _image((10, 20, 18), channels=1)
    one = predict_logits(net, image, patch_size=(8, 16, 16), mirror_axes=(0, 1, 2), batch_windows=1)
    many = predict_logits(net, image, patch_size=(8, 16, 16), mirror_axes=(0, 1, 2), batch_windows=8)
    assert one.shape == (3, 10, 20, 18)
    assert net.deep_supervision is True  # switched off only while predicting
    assert np.isfinite(one.numpy()).all()
    # instance norm sees each window on its own, so batching windows must not change anything
    torch.testing.assert_close(one, many, rtol=1e-4, atol=1e-4)
    half = predict_logits(net, image, patch_size=(8, 16, 16), mirror_axes=None, accumulate_dtype=torch.float16)
    full = predict_logits(net, image, patch_size=(8, 16, 16), mirror_axes=None)
    torch.testing.assert_close(half, full, rtol=2e-2, atol=2e-2)


def test_bad_arguments_are_named():
    net = _pointwise_net(3)
    with pytest.raises(ValueError, match="C, Z, Y, X"):
        predict_logits(net, torch.zeros(4, 4, 4), patch_size=(4, 4, 4))
    with pytest.raises(ValueError, match="step_size"):
        predict_logits(net, _image((8, 8, 8)), patch_size=(4, 4, 4), step_size=0)

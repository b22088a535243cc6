"""Convolutional building blocks of the U-Nets, 2d or 3d.

The blocks follow nnU-Net's dynamic_network_architectures exactly in what they compute and in the order they
register their parameters, so a network built from a plan has the same parameter count as nnU-Net's and the same
layer order (which lets weights be compared or transferred tensor by tensor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}

NORM_EPS = 1e-5
LEAKY_SLOPE = 1e-2


def conv_class(conv_dims: int) -> type[nn.Module]:
    """The convolution class for 2d or 3d networks; anything else is a plan error worth naming."""
    if conv_dims not in _CONV:
        raise ValueError(f"conv_dims must be 2 or 3, got {conv_dims!r}")
    return _CONV[conv_dims]


def transposed_conv_class(conv_dims: int) -> type[nn.Module]:
    conv_class(conv_dims)
    return _TRANSPOSED[conv_dims]


class ConvNormAct(nn.Module):
    """conv (same padding) -> instance norm (affine) -> optional LeakyReLU, nnU-Net's ConvDropoutNormReLU.

    The activation is optional because residual blocks add the skip between the norm and the activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        conv_dims: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        bias: bool = True,
        activation: bool = True,
    ) -> None:
        super().__init__()
        kernel_size = tuple(int(k) for k in kernel_size)
        self.conv = conv_class(conv_dims)(
            in_channels,
            out_channels,
            kernel_size,
            tuple(int(s) for s in stride),
            padding=tuple((k - 1) // 2 for k in kernel_size),
            bias=bias,
        )
        self.norm = _NORM[conv_dims](out_channels, eps=NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return self.act(x) if self.act is not None else x


def stacked_convs(
    n_convs: int,
    in_channels: int,
    out_channels: int,
    *,
    conv_dims: int,
    kernel_size: Sequence[int],
    first_stride: Sequence[int],
) -> nn.Sequential:
    """n_convs ConvNormAct layers; only the first one strides, so it does the stage's downsampling."""
    if n_convs < 1:
        raise ValueError(f"a stage needs at least one convolution, got {n_convs}")
    ones = [1] * conv_dims
    layers = [
        ConvNormAct(
            in_channels if i == 0 else out_channels,
            out_channels,
            conv_dims=conv_dims,
            kernel_size=kernel_size,
            stride=first_stride if i == 0 else ones,
        )
        for i in range(n_convs)
    ]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """ResNet-D basic block (nnU-Net's BasicBlockD): two 3x3 convs, skip = avg-pool (when strided) + 1x1 conv
    without bias (when the width changes), LeakyReLU after the addition.

    The pool-then-1x1 skip (instead of a strided 1x1 conv) keeps every input voxel in the shortcut.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        conv_dims: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
    ) -> None:
        super().__init__()
        stride = tuple(int(s) for s in stride)
        self.conv1 = ConvNormAct(in_channels, out_channels, conv_dims=conv_dims, kernel_size=kernel_size, stride=stride)
        self.conv2 = ConvNormAct(
            out_channels,
            out_channels,
            conv_dims=conv_dims,
            kernel_size=kernel_size,
            stride=[1] * conv_dims,
            activation=False,
        )
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(_AVG_POOL[conv_dims](stride, stride))
        if in_channels != out_channels:
            skip.append(
                ConvNormAct(
                    in_channels,
                    out_channels,
                    conv_dims=conv_dims,
                    kernel_size=[1] * conv_dims,
                    stride=[1] * conv_dims,
                    bias=False,
                    activation=False,
                )
            )
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        out = self.conv2(self.conv1(x))
        out += residual  # in place, as nnU-Net does: saves one activation-sized buffer
        return self.act(out)


def stacked_residual_blocks(
    n_blocks: int,
    in_channels: int,
    out_channels: int,
    *,
    conv_dims: int,
    kernel_size: Sequence[int],
    first_stride: Sequence[int],
) -> nn.Sequential:
    if n_blocks < 1:
        raise ValueError(f"a residual stage needs at least one block, got {n_blocks}")
    ones = [1] * conv_dims
    return nn.Sequential(
        *[
            ResidualBlock(
                in_channels if i == 0 else out_channels,
                out_channels,
                conv_dims=conv_dims,
                kernel_size=kernel_size,
                stride=first_stride if i == 0 else ones,
            )
            for i in range(n_blocks)
        ]
    )


def initialize_he(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2): Kaiming-normal conv weights for a leaky slope of 0.01, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def zero_last_norm_in_residual(module: nn.Module) -> None:
    """Start every residual block as an identity (nnU-Net's init_last_bn_before_add_to_0), which keeps deep
    residual encoders stable in the first iterations."""
    if isinstance(module, ResidualBlock):
        nn.init.zeros_(module.conv2.norm.weight)
        nn.init.zeros_(module.conv2.norm.bias)

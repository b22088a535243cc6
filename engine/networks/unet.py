"""The U-Nets a plan describes: nnU-Net's plain convolutional U-Net and its residual-encoder U-Net (ResEnc).

`build_network(architecture, in_channels=..., num_classes=...)` builds one from an architecture mapping;
`voxelbase.networks.trained.network_for_plan` is what the loop and the predictor call. The topology comes entirely
from the architecture; nothing here is dataset specific. For a given plan the network has exactly nnU-Net's parameter count (tests/test_network.py pins the numbers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from voxelbase.networks.blocks import (
    conv_class,
    initialize_he,
    stacked_convs,
    stacked_residual_blocks,
    transposed_conv_class,
    zero_last_norm_in_residual,
)

NETWORKS = ("plain_unet", "resenc_unet")


class Encoder(nn.Module):
    """Stages of convolutions (plain) or residual blocks (ResEnc, after a one-conv stem); the first layer of each
    stage strides. Returns every stage's output, the skips the decoder consumes."""

    def __init__(
        self,
        in_channels: int,
        *,
        conv_dims: int,
        features_per_stage: Sequence[int],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_per_stage: Sequence[int],
        residual: bool,
    ) -> None:
        super().__init__()
        self.stem: nn.Module | None = None
        if residual:
            self.stem = stacked_convs(
                1,
                in_channels,
                features_per_stage[0],
                conv_dims=conv_dims,
                kernel_size=kernel_sizes[0],
                first_stride=[1] * conv_dims,
            )
            in_channels = features_per_stage[0]
        make_stage = stacked_residual_blocks if residual else stacked_convs
        stages = []
        for features, kernel, stride, n in zip(features_per_stage, kernel_sizes, strides, n_per_stage, strict=True):
            stages.append(
                make_stage(n, in_channels, features, conv_dims=conv_dims, kernel_size=kernel, first_stride=stride)
            )
            in_channels = features
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """From the bottleneck up: transposed conv (kernel = stride) to the skip's resolution and width, concatenate
    with the skip, plain convs, and a 1x1 segmentation head per resolution.

    Heads exist at every resolution even without deep supervision, so one checkpoint serves both modes.
    """

    def __init__(
        self,
        *,
        conv_dims: int,
        num_classes: int,
        features_per_stage: Sequence[int],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_per_stage: Sequence[int],
    ) -> None:
        super().__init__()
        n_enc = len(features_per_stage)
        if len(n_per_stage) != n_enc - 1:
            raise ValueError(
                f"n_conv_per_stage_decoder needs {n_enc - 1} entries (one per stage but the bottleneck), "
                f"got {len(n_per_stage)}"
            )
        transposed = transposed_conv_class(conv_dims)
        conv = conv_class(conv_dims)
        stages, upsamplers, heads = [], [], []
        for s in range(1, n_enc):
            below, skip = features_per_stage[-s], features_per_stage[-(s + 1)]
            stride = tuple(int(v) for v in strides[-s])
            upsamplers.append(transposed(below, skip, stride, stride, bias=True))
            stages.append(
                stacked_convs(
                    n_per_stage[s - 1],
                    2 * skip,
                    skip,
                    conv_dims=conv_dims,
                    kernel_size=kernel_sizes[-(s + 1)],
                    first_stride=[1] * conv_dims,
                )
            )
            heads.append(conv(skip, num_classes, 1, 1, 0, bias=True))
        # registration order (stages, upsamplers, heads) matches nnU-Net's, so parameters line up one to one
        self.stages = nn.ModuleList(stages)
        self.upsamplers = nn.ModuleList(upsamplers)
        self.heads = nn.ModuleList(heads)

    def forward(self, skips: list[torch.Tensor], *, deep_supervision: bool) -> list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage) in enumerate(zip(self.upsamplers, self.stages, strict=True)):
            x = stage(torch.cat((up(x), skips[-(s + 2)]), dim=1))
            if deep_supervision or s == last:
                outputs.append(self.heads[s](x))
        return outputs[::-1]


class UNet(nn.Module):
    """Encoder + decoder. `deep_supervision` can be switched after construction (training on, inference off)."""

    def __init__(self, encoder: Encoder, decoder: Decoder, *, deep_supervision: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.deep_supervision = deep_supervision

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outputs = self.decoder(self.encoder(x), deep_supervision=self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]


def _per_stage(architecture: Mapping, key: str, n: int) -> list:
    value = architecture[key]
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"architecture[{key!r}] has {len(value)} entries, expected {n}")
    return value


def build_network(
    architecture: Mapping,
    *,
    in_channels: int,
    num_classes: int,
    deep_supervision: bool = True,
) -> UNet:
    """The network a plan's `architecture` dict describes, initialized as nnU-Net initializes it.

    `num_classes` counts the background. Forward returns a list of logits, full resolution first, when
    `deep_supervision`; else the full-resolution logits only.
    """
    missing = [
        k
        for k in ("network", "conv_dims", "n_stages", "features_per_stage", "kernel_sizes", "strides")
        if k not in architecture
    ]
    if missing:
        raise ValueError(f"plan architecture lacks {missing}; re-run `voxelbase plan`")
    network = architecture["network"]
    if network not in NETWORKS:
        raise ValueError(f"unknown architecture network {network!r}; expected one of {NETWORKS}")
    conv_dims = int(architecture["conv_dims"])
    conv_class(conv_dims)
    n = int(architecture["n_stages"])
    features = [int(f) for f in _per_stage(architecture, "features_per_stage", n)]
    kernels = [[int(k) for k in ks] for ks in _per_stage(architecture, "kernel_sizes", n)]
    strides = [[int(k) for k in ks] for ks in _per_stage(architecture, "strides", n)]
    for name, values in (("kernel_sizes", kernels), ("strides", strides)):
        if any(len(v) != conv_dims for v in values):
            raise ValueError(f"architecture[{name!r}] entries must have {conv_dims} elements, got {values}")
    n_encoder = _per_stage(architecture, "n_conv_per_stage", n)
    n_decoder = _per_stage(architecture, "n_conv_per_stage_decoder", n - 1)
    residual = network == "resenc_unet"

    encoder = Encoder(
        in_channels,
        conv_dims=conv_dims,
        features_per_stage=features,
        kernel_sizes=kernels,
        strides=strides,
        n_per_stage=n_encoder,
        residual=residual,
    )
    decoder = Decoder(
        conv_dims=conv_dims,
        num_classes=num_classes,
        features_per_stage=features,
        kernel_sizes=kernels,
        strides=strides,
        n_per_stage=n_decoder,
    )
    model = UNet(encoder, decoder, deep_supervision=deep_supervision)
    model.apply(initialize_he)
    if residual:
        model.apply(zero_last_norm_in_residual)
    return model


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())

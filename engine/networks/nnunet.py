"""nnU-Net v2's networks in Voxelbase's terms: its plan architecture entry as a Voxelbase architecture, and its
saved weights onto the network Voxelbase builds from that.

nnU-Net's PlainConvUNet and ResidualEncoderUNet (dynamic_network_architectures) register their parameters in the
same order as Voxelbase's U-Nets, so parameters map positionally, every shape checked (proven bit-identical in
`tests/test_network.py` against stored nnU-Net outputs). nnU-Net's state dicts list some tensors twice (the
decoder keeps a reference to the encoder; each conv block also holds its modules in `all_modules`): `torch.save`
keeps such tensors as one storage, so duplicates are dropped by storage, which gives `named_parameters()` order.
Nothing here imports nnU-Net.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from voxelbase.networks.blocks import LEAKY_SLOPE, NORM_EPS

NETWORK_CLASSES = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet": "plain_unet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet": "resenc_unet",
}


class NnunetArchitectureError(ValueError):
    """An nnU-Net architecture Voxelbase cannot build exactly; the message names the class or setting."""


def _short(name: Any) -> str:
    return str(name).rsplit(".", 1)[-1] if name is not None else "None"


def nnunet_architecture(entry: Mapping) -> dict:
    """nnU-Net's stored plan architecture (`network_class_name` + `arch_kwargs`) as a Voxelbase architecture dict;
    an error naming the class or the setting Voxelbase's networks do not have."""
    class_name = str(entry.get("network_class_name"))
    network = NETWORK_CLASSES.get(class_name)
    if network is None:
        raise NnunetArchitectureError(
            f"network class {class_name} cannot be built by Voxelbase (it builds "
            f"{' and '.join(_short(n) for n in NETWORK_CLASSES)})"
        )
    kwargs = entry.get("arch_kwargs") or {}
    residual = network == "resenc_unet"
    conv_op = str(kwargs.get("conv_op", ""))
    if _short(conv_op) not in ("Conv2d", "Conv3d"):
        raise NnunetArchitectureError(f"{_short(class_name)}: conv_op {conv_op!r} is not supported")
    dims = int(_short(conv_op)[-2])
    # the settings Voxelbase's blocks hard-code, as nnU-Net's planners write them
    expected = {
        "conv_bias": True,
        "norm_op": f"InstanceNorm{dims}d",
        "dropout_op": "None",
        "nonlin": "LeakyReLU",
    }
    for key, value in expected.items():
        found = kwargs.get(key)
        shown = _short(found) if key in ("norm_op", "dropout_op", "nonlin") else found
        if shown != value:
            raise NnunetArchitectureError(f"{_short(class_name)}: {key}={found!r} is not supported (only {value})")
    norm = dict(kwargs.get("norm_op_kwargs") or {})
    if float(norm.get("eps", 1e-5)) != NORM_EPS or not norm.get("affine", False):
        raise NnunetArchitectureError(f"{_short(class_name)}: norm_op_kwargs {norm} (only eps {NORM_EPS}, affine)")
    nonlin = dict(kwargs.get("nonlin_kwargs") or {})
    if float(nonlin.get("negative_slope", LEAKY_SLOPE)) != LEAKY_SLOPE:
        raise NnunetArchitectureError(f"{_short(class_name)}: nonlin_kwargs {nonlin} (only slope {LEAKY_SLOPE})")
    for key in ("block", "bottleneck_channels", "stem_channels"):
        if kwargs.get(key) not in (None, "BasicBlockD") and _short(kwargs.get(key)) != "BasicBlockD":
            raise NnunetArchitectureError(f"{_short(class_name)}: {key}={kwargs[key]!r} is not supported")
    blocks = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    try:
        return {
            "network": network,
            "conv_dims": dims,
            "n_stages": int(kwargs["n_stages"]),
            "features_per_stage": [int(f) for f in kwargs["features_per_stage"]],
            "kernel_sizes": [[int(k) for k in ks] for ks in kwargs["kernel_sizes"]],
            "strides": [[int(s) for s in ss] for ss in kwargs["strides"]],
            "n_conv_per_stage": [int(n) for n in kwargs[blocks]],
            "n_conv_per_stage_decoder": [int(n) for n in kwargs["n_conv_per_stage_decoder"]],
        }
    except KeyError as error:
        raise NnunetArchitectureError(f"{_short(class_name)}: arch_kwargs lacks {error.args[0]!r}") from None


def _distinct_tensors(weights: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The state dict's tensors in order, each storage view once (nnU-Net's aliases dropped)."""
    seen = set()
    out = []
    for name, tensor in weights.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key in seen:
            continue
        seen.add(key)
        out.append((name, tensor))
    return out


def load_nnunet_weights(network: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy nnU-Net's `network_weights` (a state dict as its trainer saves it) onto `network`, in place; an error
    naming the first tensor that does not fit."""
    if list(network.buffers()):
        raise NnunetArchitectureError("the network keeps buffers; nnU-Net's instance-norm U-Nets keep none")
    theirs = _distinct_tensors(weights)
    ours = list(network.named_parameters())
    if len(theirs) != len(ours):
        raise NnunetArchitectureError(
            f"nnU-Net's weights hold {len(theirs)} parameter tensors, the network built from its plan has {len(ours)}"
        )
    with torch.no_grad():
        for (name, param), (their_name, value) in zip(ours, theirs, strict=True):
            if tuple(value.shape) != tuple(param.shape):
                raise NnunetArchitectureError(
                    f"nnU-Net's {their_name} has shape {tuple(value.shape)}, the network's {name} {tuple(param.shape)}"
                )
            param.copy_(value.to(param.dtype))


__all__ = ["NETWORK_CLASSES", "NnunetArchitectureError", "load_nnunet_weights", "nnunet_architecture"]

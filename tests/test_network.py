"""The U-Nets built from plan architectures: nnU-Net's exact parameter counts, output shapes, forward on CPU.

Parameter counts below were measured from nnU-Net v2 itself (nnunetv2 2.8.1 with dynamic_network_architectures,
torch 2.14.1, CPU) with `nnunetv2.utilities.get_network_from_plans.get_network_from_plans(arch_class_name,
arch_kwargs, _kw_requires_import, input_channels, output_channels, deep_supervision=True)` on the plans' own
`architecture` entries, counting `sum(p.numel() for p in network.parameters())`:

- synth 2d and 3d_fullres: `nnUNetPlans.json` of the nnU-Net reference run on the synthetic CT dataset
  (`synth.py OUT --cases 12 --seed 0`; default ExperimentPlanner, 8 GB), 1 input channel, 3 classes.
  3d_fullres gives 16,465,580, the figure nnU-Net's reference run reports as well.
- ResEnc: `nnUNetv2_plan_experiment -d 1 -pl nnUNetPlannerResEncM` (and `-pl nnUNetPlannerResEncL`) on the same
  synthetic dataset (`synth.py --cases 12 --seed 0`, fingerprint by `nnUNetv2_extract_fingerprint -d 1`). On this
  small dataset M and L plan the same topology (features 32..320, blocks 1-3-4-6-6, one decoder conv per stage;
  only the batch size differs), both 62,727,916 parameters for 3d_fullres.
- A 6-stage ResEnc constructed the way the ResEnc planners write arch_kwargs for larger images (3x3x3 kernels,
  strides 1,2,2,2,2,2, features 32-64-128-256-320-320, blocks 1-3-4-6-6-6, decoder 1 conv), 2 input channels,
  4 classes: 102,352,244.

Beyond the counts, nnU-Net's parameters were copied tensor by tensor (same order) into these networks and the
deep-supervision outputs on a random input were bit-identical for all six cases.

That claim is tested against stored nnU-Net outputs in `test_outputs_equal_stored_nnunet` (fixtures and how they
were made: `tests/fixtures/nnunet_network/NOTE.md`): a plain 3d, a ResEnc 3d and a plain 2d U-Net, nnU-Net's
parameters loaded in registration order, its input; every deep-supervision output in eval and train mode, and the
gradient w.r.t. the input of a fixed objective, must be bit-identical (`torch.equal`) to nnU-Net's, here on
torch 2.13 against nnU-Net's run on torch 2.14.1.

The comparison runs with one intra-op thread, as the fixtures were made, because PyTorch's CPU convolution picks
its kernel by thread count: a 1x1 convolution (the segmentation heads) with batch < 16, stride 1 and no dilation
goes to the native `slow_conv3d`/`slow_conv2d` (im2col + GEMM) with one thread and to oneDNN with more
(`use_mkldnn` in ATen's Convolution.cpp), and the two sum in different orders. nnU-Net's own network at two threads
differs from its one-thread output by up to 1 ulp (max |diff| 7.2e-7 on logits of magnitude ~6) in the same way,
and Voxelbase at two threads is bit-identical to nnU-Net at two threads; so it is the thread count, not the
network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from voxelbase.networks import build_network, count_parameters
from voxelbase.networks.nnunet import nnunet_architecture as _nnunet_as_architecture

NNUNET_NETWORKS = Path(__file__).parent / "fixtures" / "nnunet_network"

SYNTH_3D_FULLRES = {
    "network": "plain_unet",
    "conv_dims": 3,
    "n_stages": 5,
    "features_per_stage": [32, 64, 128, 256, 320],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2, 2],
}
SYNTH_2D = {
    "network": "plain_unet",
    "conv_dims": 2,
    "n_stages": 5,
    "features_per_stage": [32, 64, 128, 256, 512],
    "kernel_sizes": [[3, 3]] * 5,
    "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]],
    "n_conv_per_stage": [2, 2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2, 2],
}
RESENC_M_3D = {
    **SYNTH_3D_FULLRES,
    "network": "resenc_unet",
    "n_conv_per_stage": [1, 3, 4, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1],
}
RESENC_M_2D = {
    **SYNTH_2D,
    "network": "resenc_unet",
    "n_conv_per_stage": [1, 3, 4, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1],
}
RESENC_6_STAGE = {
    "network": "resenc_unet",
    "conv_dims": 3,
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_conv_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
}


@pytest.mark.parametrize(
    ("architecture", "in_channels", "num_classes", "nnunet_count"),
    [
        (SYNTH_3D_FULLRES, 1, 3, 16_465_580),
        (SYNTH_2D, 1, 3, 7_766_828),
        (RESENC_M_3D, 1, 3, 62_727_916),
        (RESENC_M_2D, 1, 3, 37_716_844),
        (RESENC_6_STAGE, 2, 4, 102_352_244),
    ],
    ids=["synth-3d_fullres", "synth-2d", "resenc-m-3d_fullres", "resenc-m-2d", "resenc-6-stage"],
)
def test_parameter_count_equals_nnunet(architecture, in_channels, num_classes, nnunet_count):
    with torch.device("meta"):  # counting needs shapes only; skips allocating and initializing the weights
        network = build_network(architecture, in_channels=in_channels, num_classes=num_classes)
    assert count_parameters(network) == nnunet_count


def _tiny(network: str, conv_dims: int) -> dict:
    kernels = [[3] * conv_dims] * 4
    if conv_dims == 3:
        kernels[0] = [1, 3, 3]
    strides = [[1] * conv_dims] + [[2] * conv_dims] * 3
    if conv_dims == 3:
        strides[1] = [1, 2, 2]
    return {
        "network": network,
        "conv_dims": conv_dims,
        "n_stages": 4,
        "features_per_stage": [4, 8, 16, 16],
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage": [1, 2, 2, 2] if network == "resenc_unet" else [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [1, 1, 1] if network == "resenc_unet" else [2, 2, 2],
    }


@pytest.mark.parametrize("network", ["plain_unet", "resenc_unet"])
@pytest.mark.parametrize("conv_dims", [2, 3])
def test_forward_shapes_and_backward(network, conv_dims):
    torch.manual_seed(0)
    net = build_network(_tiny(network, conv_dims), in_channels=2, num_classes=3)
    spatial = (8, 16, 24) if conv_dims == 3 else (16, 24)
    x = torch.randn(2, 2, *spatial)
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 3
    if conv_dims == 3:
        expected = [(8, 16, 24), (8, 8, 12), (4, 4, 6)]
    else:
        expected = [(16, 24), (8, 12), (4, 6)]
    assert [tuple(o.shape) for o in outs] == [(2, 3, *e) for e in expected]
    sum(o.float().mean() for o in outs).backward()
    assert all(p.grad is not None for p in net.parameters())

    net.deep_supervision = False
    with torch.no_grad():
        single = net(x)
        torch.testing.assert_close(single, net.decoder(net.encoder(x), deep_supervision=True)[0])


def test_without_deep_supervision_returns_one_tensor_same_as_first_output():
    torch.manual_seed(0)
    arch = _tiny("plain_unet", 3)
    net = build_network(arch, in_channels=1, num_classes=2, deep_supervision=False)
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        out = net(x)
        net.deep_supervision = True
        full = net(x)[0]
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 8, 16, 16)
    torch.testing.assert_close(out, full)


def test_channels_last_3d_gives_the_same_result():
    torch.manual_seed(0)
    net = build_network(_tiny("resenc_unet", 3), in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        outs = net_cl(x.to(memory_format=torch.channels_last_3d))
    for a, b in zip(outs, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_initialization_follows_nnunet():
    torch.manual_seed(0)
    net = build_network(_tiny("resenc_unet", 3), in_channels=1, num_classes=3)
    block = net.encoder.stages[1][0]
    assert torch.count_nonzero(block.conv2.norm.weight) == 0  # residual blocks start as identities
    assert torch.count_nonzero(block.conv1.conv.bias) == 0
    assert float(block.conv1.conv.weight.detach().std()) > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"network": "vnet"}, "unknown architecture network"),
        ({"conv_dims": 4}, "conv_dims must be 2 or 3"),
        ({"n_conv_per_stage_decoder": [2, 2]}, "n_conv_per_stage_decoder"),
        ({"strides": [[1, 1]] * 4}, "strides"),
    ],
)
def test_bad_architecture_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        build_network({**_tiny("plain_unet", 3), **change}, in_channels=1, num_classes=2)


def test_missing_key_is_named():
    arch = _tiny("plain_unet", 3)
    del arch["strides"]
    with pytest.raises(ValueError, match="strides"):
        build_network(arch, in_channels=1, num_classes=2)


# The stored nnU-Net networks (tests/fixtures/nnunet_network/networks.json) as Voxelbase plan architectures.
PARITY_ARCHITECTURES = {
    "plain_unet_3d": {
        "network": "plain_unet",
        "conv_dims": 3,
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 32],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
    },
    "resenc_unet_3d": {
        "network": "resenc_unet",
        "conv_dims": 3,
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 32],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 2, 2, 1],
        "n_conv_per_stage_decoder": [1, 1, 1],
    },
    "plain_unet_2d": {
        "network": "plain_unet",
        "conv_dims": 2,
        "n_stages": 4,
        "features_per_stage": [8, 16, 32, 64],
        "kernel_sizes": [[3, 3]] * 4,
        "strides": [[1, 1], [2, 2], [2, 2], [2, 1]],
        "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2],
    },
}


@pytest.fixture
def one_thread():
    """The fixtures were made with one intra-op thread; the 1x1 heads' CPU kernel depends on it (see above)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load_nnunet_parameters(network: torch.nn.Module, stored, nnunet_names: list[str]) -> None:
    """Copy nnU-Net's parameters (its `named_parameters()` order) onto `network`, checking every shape."""
    ours = list(network.named_parameters())
    assert len(ours) == len(nnunet_names), f"{len(ours)} parameter tensors here, nnU-Net has {len(nnunet_names)}"
    assert not list(network.buffers())  # instance norms keep no running statistics, as in nnU-Net
    mismatched = []
    with torch.no_grad():
        for i, ((name, param), theirs) in enumerate(zip(ours, nnunet_names, strict=True)):
            value = torch.from_numpy(stored[f"param_{i:03d}"])
            if value.shape != param.shape:
                mismatched.append(f"{name} {tuple(param.shape)} vs nnU-Net {theirs} {tuple(value.shape)}")
                continue
            param.copy_(value)
    assert not mismatched, "parameter shapes differ from nnU-Net's:\n" + "\n".join(mismatched)


# The stored outputs are bit-identical to Voxelbase's on the CPU that made them; another CPU model picks other
# float32 kernels (summation order), which moves results by a few ulps: measured up to 2e-6 of the output's range
# on an AMD EPYC against fixtures made elsewhere. A wrong weight mapping or layer differs by O(1).
KERNEL_TOLERANCE = 1e-5


def _assert_same_up_to_kernels(ours: torch.Tensor, stored, what: str) -> None:
    reference = torch.as_tensor(np.asarray(stored))
    scale = float(reference.abs().max()) or 1.0
    difference = float((ours - reference).abs().max())
    assert difference <= KERNEL_TOLERANCE * scale, f"{what}: max difference {difference:.3g} (range {scale:.3g})"


@pytest.mark.parametrize("name", list(PARITY_ARCHITECTURES))
def test_outputs_equal_stored_nnunet(name, one_thread):
    entry = json.loads((NNUNET_NETWORKS / "networks.json").read_text())[name]
    architecture = PARITY_ARCHITECTURES[name]
    assert _nnunet_as_architecture(entry) == architecture
    stored = np.load(NNUNET_NETWORKS / f"{name}.npz")
    network = build_network(
        architecture, in_channels=entry["input_channels"], num_classes=entry["num_classes"], deep_supervision=True
    )
    assert count_parameters(network) == entry["parameter_count"]
    _load_nnunet_parameters(network, stored, entry["parameter_names"])
    x = torch.from_numpy(stored["input"])

    network.eval()
    with torch.no_grad():
        outputs = network(x)
    assert len(outputs) == entry["arch_kwargs"]["n_stages"] - 1
    for i, output in enumerate(outputs):
        _assert_same_up_to_kernels(output, stored[f"eval_out_{i}"], f"eval output {i}")

    network.train()
    x = x.clone().requires_grad_()
    outputs = network(x)
    for i, output in enumerate(outputs):
        _assert_same_up_to_kernels(output.detach(), stored[f"train_out_{i}"], f"train output {i}")
    objective = sum((o * o).mean() for o in outputs)
    (input_grad,) = torch.autograd.grad(objective, x)
    _assert_same_up_to_kernels(objective.detach(), stored["objective"], "objective")
    _assert_same_up_to_kernels(input_grad, stored["input_grad"], "input gradient")

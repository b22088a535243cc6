"""Dice + CE with deep supervision, against values computed by nnU-Net v2's own loss, and its semantics.

`test_loss_and_gradients_equal_stored_nnunet` checks the loss value AND its gradient w.r.t. every output against
nnU-Net's, stored in `tests/fixtures/nnunet_network/loss.npz` (see NOTE.md there), for 3 and 4 deep-supervision
outputs, batch Dice on and off, with and without an ignore label, the targets downsampled by nnU-Net's own
DownsampleSegForDSTransform. All are bit-identical (`torch.equal`), torch 2.13 here against nnU-Net on 2.14.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from voxelbase.training.loss import (
    build_loss,
    deep_supervision_scales,
    deep_supervision_weights,
    downsample_targets,
    soft_dice_loss,
)
from voxelbase.training.optim import build_optimizer, poly_lr

STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
IGNORE = 9


def _deterministic_inputs():
    """Inputs built without a random generator, so nnU-Net (another torch version) saw exactly the same."""
    n = 2 * 4 * 8 * 6
    seg = ((torch.arange(n) * 7 // 3) % 5 % 3).reshape(2, 1, 4, 8, 6).to(torch.int16)
    seg[1, 0, 0] = IGNORE
    targets = downsample_targets(seg, deep_supervision_scales(STRIDES))
    return seg, targets, [_logits_like(t) for t in targets]


def _logits_like(target: torch.Tensor) -> torch.Tensor:
    """Three-class logits of a (2, 1, *spatial) target's size, generator-free."""
    values = torch.sin(torch.arange(2 * 3 * target[0, 0].numel(), dtype=torch.float32) * 0.37)
    return values.reshape(2, 3, *target.shape[2:]) * 3


STRIDES_5 = [*STRIDES, [2, 2, 2]]  # one stage more: 4 deep-supervision outputs


def _four_output_inputs():
    n = 2 * 8 * 16 * 16
    seg = ((torch.arange(n) * 5 // 7) % 4 % 3).reshape(2, 1, 8, 16, 16).to(torch.int16)
    seg[0, 0, 2:4, 3:9] = IGNORE
    targets = downsample_targets(seg, deep_supervision_scales(STRIDES_5))
    return seg, targets, [_logits_like(t) for t in targets]


# Values from nnU-Net v2 (nnunetv2 2.8.1, torch 2.14.1): DeepSupervisionWrapper(DC_and_CE_loss({'batch_dice': bd,
# 'smooth': 1e-5, 'do_bg': False, 'ddp': False}, {}, weight_ce=1, weight_dice=1, ignore_label=ign,
# dice_class=MemoryEfficientSoftDiceLoss), weights 1/2^i with the last 0, normalized) on the inputs above, targets
# made by batchgeneratorsv2's DownsampleSegForDSTransform with nnU-Net's 1/cumprod(strides) scales; the ignore
# value replaced by 0 when ignore_label is None.
NNUNET = {
    (False, None): (2.181356191635132, 2.2035112380981445),
    (False, IGNORE): (2.149014949798584, 2.1867129802703857),
    (True, None): (2.180607557296753, 2.202326536178589),
    (True, IGNORE): (2.1503007411956787, 2.186915397644043),
}


@pytest.mark.parametrize(("batch_dice", "ignore"), list(NNUNET))
def test_loss_equals_nnunet(batch_dice, ignore):
    seg, targets, outs = _deterministic_inputs()
    if ignore is None:
        seg = torch.where(seg == IGNORE, 0, seg)
        targets = [torch.where(t == IGNORE, 0, t) for t in targets]
    loss = build_loss(batch_dice=batch_dice, strides=STRIDES, ignore_label=ignore)
    ds_value, full_res_value = NNUNET[(batch_dice, ignore)]
    assert float(loss(outs, targets)) == pytest.approx(ds_value, rel=1e-6)
    assert float(loss(outs, seg)) == pytest.approx(ds_value, rel=1e-6)  # downsampled inside
    assert float(loss(outs[0], seg)) == pytest.approx(full_res_value, rel=1e-6)


NNUNET_LOSS = Path(__file__).parent / "fixtures" / "nnunet_network" / "loss.npz"
GRADIENT_CASES = {"three_outputs": (_deterministic_inputs, STRIDES), "four_outputs": (_four_output_inputs, STRIDES_5)}


@pytest.fixture
def one_thread():
    """nnU-Net's values were computed with one intra-op thread; reductions stay in the same order with one here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("ignore", [None, IGNORE], ids=["no-ignore", "ignore"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample-dice", "batch-dice"])
@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_loss_and_gradients_equal_stored_nnunet(case, batch_dice, ignore, one_thread):
    stored = np.load(NNUNET_LOSS)
    make_inputs, strides = GRADIENT_CASES[case]
    seg, targets, outs = make_inputs()
    # the same inputs nnU-Net saw: labels, its own downsampled targets (per sample), logits
    assert torch.equal(seg, torch.from_numpy(stored[f"{case}/seg"]))
    assert len(targets) == len(outs) == len(strides) - 1
    for k, (target, logits) in enumerate(zip(targets, outs, strict=True)):
        assert torch.equal(target, torch.from_numpy(stored[f"{case}/target_{k}"])), f"target {k}"
        assert torch.equal(logits, torch.from_numpy(stored[f"{case}/logits_{k}"])), f"logits {k}"
    if ignore is None:
        targets = [torch.where(t == IGNORE, 0, t) for t in targets]

    outs = [o.clone().requires_grad_() for o in outs]
    value = build_loss(batch_dice=batch_dice, strides=strides, ignore_label=ignore)(outs, targets)
    grads = torch.autograd.grad(value, outs, allow_unused=True)

    key = f"{case}/bd{int(batch_dice)}_ign{'none' if ignore is None else ignore}"
    assert torch.equal(value.detach(), torch.from_numpy(stored[f"{key}/value"]))
    assert grads[-1] is None and f"{key}/grad_{len(outs) - 1}" not in stored  # weight 0: term skipped by both
    for k, grad in enumerate(grads[:-1]):
        assert torch.equal(grad, torch.from_numpy(stored[f"{key}/grad_{k}"])), f"gradient of output {k}"


def test_deep_supervision_scales_and_weights():
    assert deep_supervision_scales(STRIDES) == [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    assert deep_supervision_scales([[1, 1], [2, 2]]) == [[1, 1]]
    weights = deep_supervision_weights(4)
    assert weights == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert math.fsum(weights) == pytest.approx(1.0)
    assert deep_supervision_weights(1) == [1.0]


def test_downsampled_targets_keep_blocks_and_dtype():
    seg = torch.zeros(1, 1, 4, 8, 8, dtype=torch.int16)
    seg[..., 2:, 4:, :4] = 2
    low = downsample_targets(seg, [[1, 1, 1], [0.5, 0.5, 0.5]])
    assert low[0] is seg
    assert low[1].dtype == torch.int16 and low[1].shape == (1, 1, 2, 4, 4)
    expected = torch.zeros(1, 1, 2, 4, 4, dtype=torch.int16)
    expected[..., 1:, 2:, :2] = 2
    assert torch.equal(low[1], expected)
    # odd sizes round like nnU-Net (round(size * scale)) and a missing channel axis is added
    assert downsample_targets(torch.zeros(2, 5, 7, 9, dtype=torch.uint8), [[0.5, 0.5, 0.5]])[0].shape == (2, 1, 2, 4, 4)


def test_perfect_prediction_gives_dice_minus_one_and_tiny_ce():
    target = torch.tensor([[0, 1, 2, 2], [1, 1, 0, 2]]).reshape(2, 1, 1, 2, 2)
    logits = torch.nn.functional.one_hot(target[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float() * 40
    assert float(soft_dice_loss(logits, target, batch_dice=False)) == pytest.approx(-1.0, abs=1e-6)
    assert float(build_loss(batch_dice=True, strides=None)(logits, target)) == pytest.approx(-1.0, abs=1e-6)


def test_batch_dice_pools_classes_over_the_batch():
    # class 2 only in sample 0; sample 1 predicts some class 2 where there is none
    target = torch.tensor([[0, 2], [0, 1]]).reshape(2, 1, 1, 1, 2)
    logits = torch.zeros(2, 3, 1, 1, 2)
    logits[0, 2, ..., 1] = 5
    logits[1, 2, ..., 1] = 5
    per_sample = float(soft_dice_loss(logits, target, batch_dice=False))
    pooled = float(soft_dice_loss(logits, target, batch_dice=True))
    assert per_sample != pytest.approx(pooled)


def test_ignored_voxels_do_not_change_the_loss():
    _, targets, outs = _deterministic_inputs()
    loss = build_loss(batch_dice=False, strides=STRIDES, ignore_label=IGNORE)
    before = float(loss(outs, targets))
    changed = [o.clone() for o in outs]
    for o, t in zip(changed, targets, strict=True):
        o.masked_fill_((t == IGNORE).expand_as(o), 100.0)
    assert float(loss(changed, targets)) == pytest.approx(before, rel=1e-6)


def test_gradients_flow_to_all_weighted_outputs_only():
    _, targets, outs = _deterministic_inputs()
    targets = [torch.where(t == IGNORE, 0, t) for t in targets]
    outs = [o.clone().requires_grad_() for o in outs]
    build_loss(batch_dice=False, strides=STRIDES)(outs, targets).backward()
    assert outs[0].grad.abs().sum() > 0 and outs[1].grad.abs().sum() > 0
    assert outs[2].grad is None  # the lowest resolution has weight 0, as in nnU-Net


def test_poly_lr_and_optimizer():
    assert poly_lr(0, 1000, 0.01) == pytest.approx(0.01)
    assert poly_lr(500, 1000, 0.01) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(1000, 1000, 0.01) == 0.0
    net = torch.nn.Conv3d(1, 2, 3)
    opt = build_optimizer(net, lr=0.01, weight_decay=3e-5, momentum=0.99)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.99 and group["weight_decay"] == 3e-5

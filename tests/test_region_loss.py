"""The region loss (nnU-Net's DC_and_BCE_loss) and the ignore label's masking, against numbers nnU-Net measured.

tests/fixtures/nnunet_region_loss/ holds label maps, logits at three deep-supervision scales, and the loss value and
the gradient of every output as nnU-Net v2's own loss classes computed them (NOTE.md says how). The same inputs go
through Voxelbase's loss here: the label map downsampled by `downsample_targets`, the region targets made per scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxelbase.training.loss import DiceCELoss, region_targets

FIXTURE = Path(__file__).parent / "fixtures" / "nnunet_region_loss" / "nnunet_region_loss.npz"
REGIONS = [(1, 2, 3), (2, 3), (3,)]
IGNORE = 4
SCALES = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
CASES = {  # name: (regions?, batch_dice, ignore?) -- as make_fixture.py made them
    "regions": (True, False, False),
    "regions_batch_dice": (True, True, False),
    "regions_ignore": (True, False, True),
    "regions_ignore_batch_dice": (True, True, True),
    "softmax_ignore": (False, False, True),
    "softmax_ignore_batch_dice": (False, True, True),
}


@pytest.fixture(scope="module")
def measured():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradients_equal_nnunets(measured, name):
    regions, batch_dice, ignore = CASES[name]
    loss_fn = DiceCELoss(
        batch_dice=batch_dice,
        ds_scales=SCALES,
        ignore_label=IGNORE if ignore else None,
        regions=REGIONS if regions else None,
    )
    outputs = [torch.tensor(measured[f"{name}/logits{i}"], requires_grad=True) for i in range(len(SCALES))]
    seg = torch.from_numpy(measured[f"{name}/seg"])
    value = loss_fn(outputs, seg)
    value.backward()
    assert value.item() == pytest.approx(float(measured[f"{name}/loss"]), rel=1e-5, abs=1e-6)
    for i, output in enumerate(outputs):
        expected = measured[f"{name}/grad{i}"]
        got = np.zeros_like(expected) if output.grad is None else output.grad.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-8, err_msg=f"{name}: gradient of output {i}")


def test_region_target_has_one_channel_per_region():
    seg = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int16).view(1, 1, 5)
    target = region_targets(seg, REGIONS)
    assert target.shape == (1, 3, 5)
    assert target[0].int().tolist() == [
        [0, 1, 1, 1, 0],  # whole tumour: 1, 2, 3
        [0, 0, 1, 1, 0],  # tumour core: 2, 3
        [0, 0, 0, 1, 0],  # enhancing: 3; the ignore value 4 is in no region
    ]


@pytest.mark.parametrize("regions", [None, REGIONS])
def test_ignored_voxels_add_nothing_to_the_loss(regions):
    """Whatever the logits say where the label is ignored, neither the value nor the other gradients change, and
    the ignored voxels get no gradient."""
    torch.manual_seed(0)
    channels = 3 if regions else 4
    seg = torch.randint(0, 4, (2, 1, 6, 6, 6), dtype=torch.int16)
    seg[:, :, :3] = IGNORE
    loss_fn = DiceCELoss(batch_dice=False, ignore_label=IGNORE, regions=regions)
    logits = torch.randn(2, channels, 6, 6, 6)
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(2, channels, 3, 6, 6) * 10
    a, b = logits.clone().requires_grad_(), changed.clone().requires_grad_()
    loss_a, loss_b = loss_fn(a, seg), loss_fn(b, seg)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    loss_a.backward()
    loss_b.backward()
    assert torch.count_nonzero(a.grad[:, :, :3]) == 0
    torch.testing.assert_close(a.grad[:, :, 3:], b.grad[:, :, 3:])


def test_an_all_ignored_batch_gives_no_cross_entropy():
    seg = torch.full((1, 1, 4, 4, 4), IGNORE, dtype=torch.int16)
    for regions in (None, REGIONS):
        logits = torch.randn(1, 3 if regions else 4, 4, 4, 4, requires_grad=True)
        value = DiceCELoss(batch_dice=True, ignore_label=IGNORE, regions=regions)(logits, seg)
        assert torch.isfinite(value)

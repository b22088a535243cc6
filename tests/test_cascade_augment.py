"""Cascade augmentation of the previous stage's one-hot channels: encoding, nnU-Net's operators, components, rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from voxelbase.training.cascade_augment import (
    BINARY_OPERATORS,
    apply_binary_operator,
    augment_previous_stage,
    previous_stage_onehot,
    structuring_element,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Per-sample FFTs on tiny patches: intra-op threads only add contention (the loader's workers use one too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def blobby_segmentation(shape: tuple[int, ...], num_labels: int, seed: int) -> torch.Tensor:
    """(1, 1, *shape) label map of smooth blobs with labels 0..num_labels."""
    noise = np.random.default_rng(seed).integers(0, num_labels + 1, shape)
    return torch.from_numpy(ndimage.median_filter(noise, size=3)).long()[None, None]


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Full-connectivity components of a bool mask, each as a bool mask."""
    labelled, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    return [labelled == i for i in range(1, count + 1)]


# --- one-hot encoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 7), (4, 5, 6)])
def test_onehot_follows_label_order_and_skips_background(shape):
    seg = torch.from_numpy(np.random.default_rng(3).integers(0, 4, (2, 1, *shape)))
    onehot = previous_stage_onehot(seg, [3, 1])
    assert onehot.shape == (2, 2, *shape) and onehot.dtype == torch.float32
    assert torch.equal(onehot[:, 0], (seg[:, 0] == 3).float())
    assert torch.equal(onehot[:, 1], (seg[:, 0] == 1).float())
    # background (0) and the unlisted label 2 have no channel: those voxels are all-zero
    assert torch.equal(onehot.sum(1) == 0, (seg[:, 0] == 0) | (seg[:, 0] == 2))
    assert set(onehot.unique().tolist()) == {0.0, 1.0}


def test_onehot_rejects_bad_input():
    with pytest.raises(ValueError, match="B, 1"):
        previous_stage_onehot(torch.zeros((1, 2, 4, 4), dtype=torch.long), [1])
    with pytest.raises(TypeError, match="integer"):
        previous_stage_onehot(torch.zeros((1, 1, 4, 4)), [1])
    assert previous_stage_onehot(torch.zeros((2, 1, 4, 4), dtype=torch.long), []).shape == (2, 0, 4, 4)


# --- structuring element and operators ----------------------------------------------------------------------------


# shape and size of skimage.morphology.disk(r) / ball(r) for float radii (skimage 0.26, as nnU-Net calls them)
SKIMAGE_DISK = {1: ((3, 3), 5), 1.5: ((4, 4), 4), 2.2: ((6, 6), 15), 3.2: ((8, 8), 31), 3.7: ((9, 9), 41),
                5.5: ((12, 12), 88), 7.9: ((17, 17), 191)}  # fmt: skip
SKIMAGE_BALL = {1: ((3, 3, 3), 7), 1.5: ((4, 4, 4), 8), 2.2: ((5, 5, 5), 33), 3.2: ((7, 7, 7), 119),
                3.7: ((8, 8, 8), 160), 5.5: ((12, 12, 12), 672), 7.9: ((16, 16, 16), 1736)}  # fmt: skip


@pytest.mark.parametrize("radius", sorted(SKIMAGE_DISK))
def test_structuring_element_matches_skimage(radius):
    disk, ball = structuring_element(radius, 2), structuring_element(radius, 3)
    assert disk.dtype == bool and (disk.shape, int(disk.sum())) == SKIMAGE_DISK[radius]
    assert ball.dtype == bool and (ball.shape, int(ball.sum())) == SKIMAGE_BALL[radius]


def test_structuring_element_small_cases():
    assert np.array_equal(structuring_element(1, 2), ndimage.generate_binary_structure(2, 1))
    assert np.array_equal(structuring_element(1, 3), ndimage.generate_binary_structure(3, 1))
    # disk(1.5) samples the off-centre grid -1.5..1.5: only the central 2x2 lies within the radius
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    assert np.array_equal(structuring_element(1.5, 2), expected)


def test_even_sized_element_uses_nnunet_offsets():
    # nnU-Net correlates with (k - 1) // 2 voxels of padding in front: a 2-wide element reaches one voxel backwards
    # (values from batchgeneratorsv2's binary_dilation_torch / binary_erosion_torch with skimage's disk/ball(1.5))
    point = torch.zeros((10, 10), dtype=torch.bool)
    point[5, 5] = True
    assert apply_binary_operator(point, "dilation", 1.5).nonzero().tolist() == [[4, 4], [4, 5], [5, 4], [5, 5]]
    point3 = torch.zeros((8, 8, 8), dtype=torch.bool)
    point3[3, 3, 3] = True
    assert torch.equal(
        apply_binary_operator(point3, "dilation", 1.5).nonzero(), torch.cartesian_prod(*[torch.tensor([2, 3])] * 3)
    )
    square = torch.zeros((10, 10), dtype=torch.bool)
    square[2:6, 2:6] = True
    assert torch.equal(
        apply_binary_operator(square, "erosion", 1.5).nonzero(), torch.cartesian_prod(*[torch.arange(2, 5)] * 2)
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_dilation_grows_and_erosion_shrinks_for_float_radii(dims):
    shape = (24, 21) if dims == 2 else (12, 11, 10)
    mask = torch.from_numpy(ndimage.binary_dilation(rng(1).random(shape) < 0.03, iterations=2))
    for radius in rng(2).uniform(1, 8, 12):
        dilated = apply_binary_operator(mask, "dilation", radius)
        eroded = apply_binary_operator(mask, "erosion", radius)
        assert bool((dilated >= mask).all()) and bool((eroded <= mask).all())
        assert bool(dilated.sum() > mask.sum()) and bool(eroded.sum() < mask.sum())


def scipy_outcomes(mask: np.ndarray, radius: int) -> dict[str, np.ndarray]:
    """nnU-Net's four operators for a symmetric (integer-radius) element, with scipy: erosion treats outside as set."""
    strel = structuring_element(radius, mask.ndim)

    def dilate(m: np.ndarray) -> np.ndarray:
        return ndimage.binary_dilation(m, strel, border_value=0)

    def erode(m: np.ndarray) -> np.ndarray:
        return ndimage.binary_erosion(m, strel, border_value=1)

    dilated, eroded = dilate(mask), erode(mask)
    return {"dilation": dilated, "erosion": eroded, "closing": erode(dilated), "opening": dilate(eroded)}


@pytest.mark.parametrize("shape,radius", [((20, 20), 2), ((10, 10, 10), 1)])
def test_binary_operator_transform_gives_one_of_the_four_scipy_outcomes(shape, radius):
    mask = np.zeros(shape, bool)
    mask[(slice(3, 7),) * len(shape)] = True  # a square/cube touching nothing
    mask[(slice(2, 4),) + (slice(8, 10),) * (len(shape) - 1)] = True  # a small blob that erosion removes
    mask[(slice(0, 3),) * len(shape)] |= True  # overlapping the border: erosion keeps it there
    mask[(5,) * len(shape)] = False  # a hole closing fills
    expected = scipy_outcomes(mask, radius)
    assert len({v.tobytes() for v in expected.values()}) == 4
    onehot = torch.from_numpy(mask).float()[None, None]
    seen = set()
    for seed in range(24):
        out = augment_previous_stage(
            onehot, generator=rng(seed), p_binary_operator=1, strel_size=(radius, radius), p_remove_component=0
        )[0, 0].numpy()
        match = [name for name, v in expected.items() if np.array_equal(out.astype(bool), v)]
        assert len(match) == 1, f"seed {seed}: output is none of nnU-Net's operators"
        seen.add(match[0])
    assert seen == set(BINARY_OPERATORS)


def test_binary_operator_takes_growth_from_other_channels_only():
    seg = torch.zeros((1, 1, 16, 16), dtype=torch.long)
    seg[0, 0, 4:12, 2:8] = 1
    seg[0, 0, 4:12, 8:14] = 2  # touching label 1
    onehot = previous_stage_onehot(seg, [1, 2])
    taken = [False, False]
    for seed in range(20):
        out = augment_previous_stage(onehot, generator=rng(seed), p_binary_operator=1, p_remove_component=0)
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        assert bool((out.sum(1) <= 1).all())
        for k in range(2):
            # the other channel's growth took voxels of channel k: they now belong to the other label
            taken[k] |= bool(((onehot[0, k] == 1) & (out[0, 1 - k] == 1)).any())
    assert taken == [True, True]


# --- component removal --------------------------------------------------------------------------------------------


def test_removes_exactly_one_small_component_and_never_a_large_one_2d():
    mask = np.zeros((20, 20), bool)  # 400 voxels: 15% is exactly 60
    mask[1:7, 1:11] = True  # 60 voxels: not strictly below 15%, never removed
    mask[12:14, 12:14] = True  # 4 voxels
    mask[16, 2] = mask[17, 3] = True  # touching only diagonally: one component under 8-connectivity
    mask[10:15, 17] = True  # 5 voxels
    small = [c for c in components(mask) if c.sum() < 60]
    assert len(small) == 3
    onehot = torch.from_numpy(mask).float()[None, None]
    removed_counts = [0, 0, 0]
    for seed in range(40):
        out = augment_previous_stage(onehot, generator=rng(seed), p_binary_operator=0, p_remove_component=1)
        gone = mask & ~out[0, 0].numpy().astype(bool)
        assert not (out[0, 0].numpy().astype(bool) & ~mask).any()
        hits = [i for i, c in enumerate(small) if np.array_equal(gone, c)]
        assert len(hits) == 1, f"seed {seed}: removed voxels are not exactly one small component"
        removed_counts[hits[0]] += 1
    assert all(n > 0 for n in removed_counts)


def test_component_of_59_is_removable_but_60_is_not():
    for size, removable in ((59, True), (60, False)):
        mask = np.zeros((20, 20), bool)
        mask.flat[np.arange(size) * 1] = True  # rows 0..2 filled in reading order: one component
        onehot = torch.from_numpy(mask).float()[None, None]
        out = augment_previous_stage(onehot, generator=rng(0), p_binary_operator=0, p_remove_component=1)
        assert bool((out == 0).all()) == removable


def test_removes_one_component_per_channel_3d_with_26_connectivity():
    seg = np.zeros((8, 8, 8), np.int64)  # 512 voxels: 15% is 76.8
    seg[0:4, 0:4, 0:5] = 1  # 80 voxels: never removed
    seg[6, 6, 6] = seg[7, 7, 7] = 1  # corner-touching: one component under 26-connectivity
    seg[0:2, 6:8, 0:2] = 2
    seg[5, 0, 6] = 2
    onehot = previous_stage_onehot(torch.from_numpy(seg)[None, None], [1, 2])
    for seed in range(10):
        out = augment_previous_stage(onehot, generator=rng(seed), p_binary_operator=0, p_remove_component=1)
        one, two = out[0, 0].numpy().astype(bool), out[0, 1].numpy().astype(bool)
        assert one[0:4, 0:4, 0:5].all()
        assert int((seg == 1).sum() - one.sum()) == 2 and not one[6, 6, 6] and not one[7, 7, 7]
        assert int((seg == 2).sum() - two.sum()) in (1, 8)  # the single voxel or the 2x2x2 block


# --- probabilities, reproducibility, invariants -------------------------------------------------------------------


def ring_batch(n: int) -> torch.Tensor:
    """n copies of an 8x8 one-channel sample that every operator and every component removal changes."""
    mask = torch.zeros((8, 8))
    mask[2:5, 2:5] = 1
    mask[3, 3] = 0  # a ring: dilation grows it, erosion/opening empty it, closing fills the hole
    mask[7, 7] = 1  # a second small component so a removal always has a candidate
    return mask.expand(n, 1, 8, 8).clone()


def changed(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (out != ref).flatten(1).any(1)


def test_rates_match_nnunet_probabilities():
    batch = ring_batch(500)
    # with certainty every sample changes, so the changed fraction below measures the apply probability
    head = batch[:100]
    assert bool(
        changed(augment_previous_stage(head, generator=rng(0), p_remove_component=0, p_binary_operator=1), head).all()
    )
    assert bool(
        changed(augment_previous_stage(head, generator=rng(0), p_binary_operator=0, p_remove_component=1), head).all()
    )
    binary = changed(augment_previous_stage(batch, generator=rng(1), p_remove_component=0), batch).float().mean()
    remove = changed(augment_previous_stage(batch, generator=rng(2), p_binary_operator=0), batch).float().mean()
    both = changed(augment_previous_stage(batch, generator=rng(3)), batch).float().mean()
    # 500 draws: the standard error is ~0.022, so these bands are > 4 sigma wide
    assert 0.3 < binary < 0.5
    assert 0.12 < remove < 0.28
    assert 0.42 < both < 0.62  # 1 - 0.6 * 0.8 = 0.52
    off = augment_previous_stage(batch, generator=rng(4), p_binary_operator=0, p_remove_component=0)
    assert torch.equal(off, batch)


@pytest.mark.parametrize("shape", [(16, 16), (8, 10, 12)])
def test_channels_stay_mutually_exclusive_and_binary(shape):
    onehot = previous_stage_onehot(torch.cat([blobby_segmentation(shape, 3, s) for s in range(4)]), [1, 2, 3])
    for seed in range(5):
        out = augment_previous_stage(onehot, generator=rng(seed), p_binary_operator=1, p_remove_component=1)
        assert out.shape == onehot.shape and out.dtype == onehot.dtype
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        assert bool((out.sum(1) <= 1).all())


def test_same_seed_same_output_and_input_untouched():
    onehot = previous_stage_onehot(torch.cat([blobby_segmentation((12, 12, 12), 2, s) for s in range(6)]), [1, 2])
    before = onehot.clone()
    a = augment_previous_stage(onehot, generator=rng(7), p_binary_operator=0.5, p_remove_component=0.5)
    b = augment_previous_stage(onehot, generator=rng(7), p_binary_operator=0.5, p_remove_component=0.5)
    c = augment_previous_stage(onehot, generator=rng(8), p_binary_operator=0.5, p_remove_component=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(onehot, before)


def test_keeps_dtype_and_rejects_bad_arguments():
    batch = ring_batch(4).to(torch.float64)
    out = augment_previous_stage(batch, generator=rng(0), p_binary_operator=1, p_remove_component=1)
    assert out.dtype == torch.float64
    with pytest.raises(ValueError, match="B, K"):
        augment_previous_stage(batch[0], generator=rng(0))
    with pytest.raises(ValueError, match="p_binary_operator"):
        augment_previous_stage(batch, generator=rng(0), p_binary_operator=1.5)
    with pytest.raises(ValueError, match="strel_size"):
        augment_previous_stage(batch, generator=rng(0), strel_size=(8, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    onehot = previous_stage_onehot(torch.cat([blobby_segmentation((16, 16, 16), 2, s) for s in range(4)]), [1, 2])
    cpu = augment_previous_stage(onehot, generator=rng(5), p_binary_operator=1, p_remove_component=1)
    gpu = augment_previous_stage(onehot.cuda(), generator=rng(5), p_binary_operator=1, p_remove_component=1)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)

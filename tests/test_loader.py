"""The patch stream against the stored arrays: offsets, padding, nnU-Net's sampling rule, determinism, 2-D,
chunk-limited reads and the error for missing preprocessing. Real preprocessed demo data in a tmp project."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from voxelbase.ingest import ingest_dataset
from voxelbase.ingest.demo import write_demo_dataset
from voxelbase.planning import load_plan, plan_dataset
from voxelbase.preprocessing.dataset import preprocess_dataset
from voxelbase.project import Project
from voxelbase.store import stage_name
from voxelbase.store.layout import case_dir
from voxelbase.training.augment import AugmentConfig, initial_patch_size, use_dummy_2d
from voxelbase.training.loader import PatchStream, StreamSettings, augment_batch
from voxelbase.training.patches import CaseEntry, load_cases, read_patch, sample_batch

DATASET = "demo"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Project:
    """Six demo CT cases, planned and preprocessed for 3d_fullres and 2d (cases smaller than the read patch)."""
    root = tmp_path_factory.mktemp("loader")
    raw = write_demo_dataset(root / "raw", cases=6, test_cases=0, seed=5, shape=(16, 32, 32))
    project = Project.resolve(root / "project")
    ingest_dataset(raw, name=DATASET, project=project, workers=1)
    plan_dataset(DATASET, project=project)
    for configuration in ("3d_fullres", "2d"):
        preprocess_dataset(DATASET, configuration=configuration, project=project, workers=1, progress=False)
    return project


def stream_for(project: Project, configuration: str, *, augment: bool, seed: int = 0, batch_size=None, **kw):
    plan = load_plan(project, DATASET, configuration=configuration)
    stage = stage_name(plan.plan, configuration)
    ids = [
        p.name for p in (project.store_path / DATASET / stage).iterdir() if p.is_dir() and not p.name.startswith(".")
    ]
    cases = load_cases(project, DATASET, plan=plan.plan, configuration=configuration, case_ids=ids)
    patch = tuple(plan.patch_size)
    config = AugmentConfig() if augment else None
    dummy = use_dummy_2d(patch, AugmentConfig())
    settings = StreamSettings(
        batch_size=batch_size or plan.batch_size,
        patch_size=patch,
        read_size=initial_patch_size(patch, AugmentConfig(), dummy_2d=dummy),  # larger than the cases: padding
        oversample_foreground=0.33,
        seed=seed,
        num_classes=plan.num_classes,
        augment=config,
        dummy_2d=dummy,
    )
    return PatchStream(project, DATASET, stage=stage, cases=cases, settings=settings, **kw), stage


def stored(project: Project, stage: str, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    directory = case_dir(project, DATASET, case_id, stage=stage)
    return zarr.open_array(str(directory / "image"), mode="r")[...], zarr.open_array(str(directory / "label"))[...]


def expected_patch(array: np.ndarray, start, size, fill) -> np.ndarray:
    """An independent crop: pad the whole array generously with `fill`, then slice."""
    spatial = len(size)
    margin = [max(size)] * spatial
    padded = np.pad(array, [(0, 0)] * (array.ndim - spatial) + [(m, m) for m in margin], constant_values=fill)
    return padded[(..., *[slice(s + m, s + m + n) for s, m, n in zip(start, margin, size)])]


def test_patches_equal_the_stored_arrays_at_their_offsets_with_padding(prepared):
    stream, stage = stream_for(prepared, "3d_fullres", augment=False, batch_size=4)
    size = stream.settings.read_size
    outside = 0
    for index in range(4):
        batch = stream.read(index)
        assert batch.image.shape == (4, 1, *size) and batch.image.dtype == torch.float32
        assert batch.label.shape == (4, 1, *size) and batch.label.dtype == torch.int16
        for b, (case_id, start) in enumerate(zip(batch.case_ids, batch.starts)):
            image, label = stored(prepared, stage, case_id)
            outside += any(s < 0 or s + n > e for s, n, e in zip(start, size, label.shape))
            assert np.array_equal(batch.image[b].numpy(), expected_patch(image, start, size, 0.0))
            # label padding is -1 in the read; without augmentation the stream clamps it to background
            assert np.array_equal(batch.label[b, 0].numpy(), np.maximum(expected_patch(label, start, size, -1), 0))
    assert outside > 0  # the read patch is larger than the cases, so the border path was exercised


def test_read_patch_pads_labels_with_minus_one_and_fills_a_given_buffer(prepared):
    stage = stage_name(load_plan(prepared, DATASET, configuration="3d_fullres").plan, "3d_fullres")
    case_id = sorted(p.name for p in (prepared.store_path / DATASET / stage).iterdir() if p.is_dir())[0]
    directory = case_dir(prepared, DATASET, case_id, stage=stage)
    array = zarr.open_array(str(directory / "label"), mode="r")
    full = array[...]
    rng = np.random.default_rng(0)
    for _ in range(30):
        size = [int(rng.integers(1, 2 * e)) for e in full.shape]
        start = [int(rng.integers(-n, e)) for n, e in zip(size, full.shape)]
        assert np.array_equal(read_patch(array, start, size, fill=-1), expected_patch(full, start, size, -1))
        out = np.full(size, 99, dtype=np.int16)
        read_patch(array, start, size, fill=-1, out=out)
        assert np.array_equal(out, expected_patch(full, start, size, -1))
    entirely_outside = read_patch(array, [full.shape[0] + 3, 0, 0], [2, 4, 4], fill=-1)
    assert (entirely_outside == -1).all()


def nnunet_bounds(extent: int, read: int, final: int) -> tuple[int, int]:
    """nnU-Net v2's nnUNetDataLoader.get_bbox bounds, written as it writes them."""
    need_to_pad = read - final
    if need_to_pad + extent < read:
        need_to_pad = read - extent
    lbs = -need_to_pad // 2
    ubs = extent + need_to_pad // 2 + need_to_pad % 2 - read
    return lbs, ubs


def test_uniform_starts_cover_nnunets_allowed_range():
    # odd and even padding, a case smaller than the read patch, and one smaller than the final patch
    case = CaseEntry("c", (10, 40, 7), {})
    read, final = (13, 20, 16), (8, 16, 10)
    requests = sample_batch(
        np.random.default_rng(1), [case], batch_size=3000, read_size=read, patch_size=final, oversample=0.0
    )
    starts = np.array([r.start for r in requests])
    assert not any(r.forced_foreground for r in requests)
    for axis in range(3):
        assert (starts[:, axis].min(), starts[:, axis].max()) == nnunet_bounds(
            case.shape[axis], read[axis], final[axis]
        )


def test_forced_count_follows_nnunets_rule_and_centres_on_the_chosen_voxel():
    voxel = np.array([[7, 3, 30]], dtype=np.int32)
    case = CaseEntry("c", (10, 40, 36), {1: voxel, 2: np.empty((0, 3), np.int32)})
    read, final = (12, 20, 16), (8, 16, 10)
    rng = np.random.default_rng(2)
    for batch_size in (1, 2, 3, 4, 5, 7, 12):
        requests = sample_batch(rng, [case], batch_size=batch_size, read_size=read, patch_size=final, oversample=0.33)
        forced = [r.forced_foreground for r in requests]
        n_random = round(batch_size * (1 - 0.33))  # nnU-Net: sample i is forced iff not i < round(B * (1 - p))
        assert forced == [False] * n_random + [True] * (batch_size - n_random)
        for r in requests:
            if r.forced_foreground:  # class 2 has no voxels: class 1's only voxel is the centre, unless clamped
                lows = [nnunet_bounds(e, n, f)[0] for e, n, f in zip(case.shape, read, final)]
                assert r.start == tuple(max(lo, int(v) - n // 2) for lo, v, n in zip(lows, voxel[0], read))


def test_forced_samples_of_real_cases_contain_foreground_at_their_centre(prepared):
    stream, _ = stream_for(prepared, "3d_fullres", augment=False, batch_size=3)
    size = stream.settings.read_size
    for index in range(8):
        batch = stream.read(index)
        assert batch.forced_foreground == [False, False, True]
        label = batch.label[2, 0].numpy()
        case = next(c for c in stream.cases if c.case_id == batch.case_ids[2])
        lows = [nnunet_bounds(e, n, f)[0] for e, n, f in zip(case.shape, size, stream.settings.patch_size)]
        # the class voxel sits at read // 2 along every axis whose start was not clamped to nnU-Net's lower bound,
        # and between the start and read // 2 along the clamped ones
        region = tuple(
            slice(n // 2, n // 2 + 1) if s > lo else slice(0, n // 2 + 1)
            for s, lo, n in zip(batch.starts[2], lows, size)
        )
        assert (label[region] > 0).any()


def test_same_seed_same_batches_iterate_in_order_and_threads_equal_sequential(prepared):
    stream, _ = stream_for(prepared, "3d_fullres", augment=True, workers=2, prefetch=3)
    twin, _ = stream_for(prepared, "3d_fullres", augment=True, workers=1)
    other_seed, _ = stream_for(prepared, "3d_fullres", augment=True, seed=1, workers=1)
    a, b = stream.produce(5), twin.produce(5)
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label) and a.starts == b.starts
    assert a.image.shape[2:] == tuple(stream.settings.patch_size) and a.label.min() >= 0
    assert not torch.equal(stream.read(5).image, stream.read(6).image)
    assert stream.read(5).starts != other_seed.read(5).starts or stream.read(5).case_ids != other_seed.read(5).case_ids
    produced = list(stream.iterate(3, 9))
    assert [batch.index for batch in produced] == list(range(3, 9))
    for batch in produced:
        sequential = twin.produce(batch.index)
        assert torch.equal(batch.image, sequential.image) and torch.equal(batch.label, sequential.label)
    assert list(stream.iterate(4, 4)) == []
    # augmenting later (as on an accelerator) gives the batch the workers would have produced
    deferred = augment_batch(twin.read(7), twin.settings, device=torch.device("cpu"))
    assert torch.equal(deferred.image, twin.produce(7).image)


def test_2d_patches_are_slices_of_the_stored_case(prepared):
    stream, stage = stream_for(prepared, "2d", augment=False, batch_size=5)
    size = stream.settings.read_size
    assert len(size) == 2
    for index in range(3):
        batch = stream.read(index)
        assert batch.image.shape == (5, 1, *size) and batch.label.shape == (5, 1, *size)
        for b, (case_id, start) in enumerate(zip(batch.case_ids, batch.starts)):
            image, label = stored(prepared, stage, case_id)
            z, yx = start[0], start[1:]
            assert 0 <= z < label.shape[0]
            assert np.array_equal(batch.image[b].numpy(), expected_patch(image[:, z], yx, size, 0.0))
            assert np.array_equal(batch.label[b, 0].numpy(), np.maximum(expected_patch(label[z], yx, size, -1), 0))
        assert (batch.label[-1] > 0).any()  # the forced sample's slice holds its class voxel
    augmented, _ = stream_for(prepared, "2d", augment=True, batch_size=5)
    assert augmented.produce(0).image.shape == (5, 1, *augmented.settings.patch_size)


def test_only_the_chunks_a_patch_touches_are_read(prepared, tmp_path):
    """Every chunk file the patch does not touch is overwritten with garbage: reading still succeeds and is exact;
    garbage in a touched chunk fails the read."""
    stage = stage_name(load_plan(prepared, DATASET, configuration="3d_fullres").plan, "3d_fullres")
    case_id = sorted(p.name for p in (prepared.store_path / DATASET / stage).iterdir() if p.is_dir())[0]
    source = case_dir(prepared, DATASET, case_id, stage=stage) / "image"
    copy = tmp_path / "image"
    shutil.copytree(source, copy)
    array = zarr.open_array(str(copy), mode="r")
    full, chunks = array[...], array.chunks
    assert any(s > c for s, c in zip(array.shape[1:], chunks[1:]))  # several chunks per case
    start, size = (-3, 2, 5), (6, 5, 4)  # touches chunk 0 along each axis (and the padding)
    touched = {(0, 0, 0, 0)}
    files = [p for p in (copy / "c").rglob("*") if p.is_file()]
    untouched = [p for p in files if tuple(int(x) for x in p.relative_to(copy / "c").parts) not in touched]
    assert len(untouched) == len(files) - 1 > 0
    for path in untouched:
        path.write_bytes(b"not a blosc chunk" * 7)
    assert np.array_equal(read_patch(array, start, size), expected_patch(full, start, size, 0.0))
    (copy / "c" / "0" / "0" / "0" / "0").write_bytes(b"not a blosc chunk" * 7)
    with pytest.raises(Exception):  # noqa: B017 - the codec's own error type
        read_patch(array, start, size)


def test_reads_through_zarr_for_other_stores_give_the_same_patch(prepared):
    stage = stage_name(load_plan(prepared, DATASET, configuration="3d_fullres").plan, "3d_fullres")
    case_id = sorted(p.name for p in (prepared.store_path / DATASET / stage).iterdir() if p.is_dir())[0]
    full = zarr.open_array(str(case_dir(prepared, DATASET, case_id, stage=stage) / "image"), mode="r")[...]
    memory = zarr.create_array(
        store=zarr.storage.MemoryStore(), shape=full.shape, dtype=full.dtype, chunks=(1, 5, 7, 6)
    )
    memory[...] = full
    start, size = (-2, 3, 10), (9, 20, 40)
    assert np.array_equal(read_patch(memory, start, size), expected_patch(full, start, size, 0.0))


def test_missing_preprocessing_names_the_command_to_run(prepared):
    plan = load_plan(prepared, DATASET, configuration="3d_fullres").plan
    with pytest.raises(LookupError, match=r"voxelbase preprocess demo --configuration 3d_fullres"):
        load_cases(prepared, DATASET, plan=plan, configuration="3d_fullres", case_ids=["demo_000", "never_made"])
    with pytest.raises(LookupError, match=r"voxelbase preprocess demo --configuration 3d_lowres"):
        load_cases(prepared, DATASET, plan=plan, configuration="3d_lowres", case_ids=["demo_000"])


def test_load_cases_gives_shapes_and_locations_inside_their_labels(prepared):
    plan = load_plan(prepared, DATASET, configuration="3d_fullres").plan
    stage = stage_name(plan, "3d_fullres")
    ids = sorted(p.name for p in (prepared.store_path / DATASET / stage).iterdir() if p.is_dir())
    cases = load_cases(prepared, DATASET, plan=plan, configuration="3d_fullres", case_ids=ids)
    assert [c.case_id for c in cases] == ids
    for case in cases:
        _, label = stored(prepared, stage, case.case_id)
        assert case.shape == label.shape and case.locations
        for value, where in case.locations.items():
            assert where.dtype == np.int32 and where.shape[1] == 3
            assert (label[tuple(where.T)] == value).all()


def test_stream_needs_cases():
    settings = StreamSettings(
        batch_size=2, patch_size=(8, 8, 8), read_size=(8, 8, 8), oversample_foreground=0.33, seed=0, num_classes=2
    )
    with pytest.raises(ValueError, match="at least one case"):
        PatchStream(Project.resolve(Path("unused")), DATASET, stage="s", cases=[], settings=settings)


def test_probabilistic_oversampling_forces_about_the_given_share():
    from voxelbase.training.patches import CaseEntry, sample_batch

    case = CaseEntry("c", (20, 20, 20), {1: np.array([[10, 10, 10]], dtype=np.int32)})
    rng = np.random.default_rng(0)
    forced = [
        r.forced_foreground
        for _ in range(200)
        for r in sample_batch(
            rng, [case], batch_size=5, read_size=(8, 8, 8), patch_size=(8, 8, 8), oversample=0.33, probabilistic=True
        )
    ]
    assert 0.28 < np.mean(forced) < 0.38

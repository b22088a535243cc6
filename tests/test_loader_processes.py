"""Patch-stream workers as processes: the same batches, in the same order, as worker threads make."""

from __future__ import annotations

import itertools

import pytest
import torch

from voxelbase.planning import load_plan
from voxelbase.store import stage_name
from voxelbase.training.augment import AugmentConfig, initial_patch_size, use_dummy_2d
from voxelbase.training.loader import PatchStream, StreamSettings
from voxelbase.training.patches import load_cases


@pytest.fixture(scope="module")
def stream_args(tmp_path_factory) -> dict:
    from benchmarks.gpu_smoke import make_project

    project = make_project(tmp_path_factory.mktemp("streams"), cases=3, shape=(12, 24, 24), workers=1)
    plan = load_plan(project, "synth", configuration="3d_fullres")
    stage = stage_name(plan.plan, "3d_fullres")
    ids = [f"case_{i:03d}" for i in range(3)]
    patch = tuple(plan.patch_size)
    config = AugmentConfig()
    dummy = use_dummy_2d(patch, config)
    settings = StreamSettings(
        batch_size=2,
        patch_size=patch,
        read_size=initial_patch_size(patch, config, dummy_2d=dummy),
        oversample_foreground=0.33,
        seed=7,
        num_classes=plan.num_classes,
        augment=config,
        dummy_2d=dummy,
    )
    cases = load_cases(project, "synth", plan=plan.plan, configuration="3d_fullres", case_ids=ids)
    return {"project": project, "dataset": "synth", "stage": stage, "cases": cases, "settings": settings}


def test_process_workers_make_the_thread_workers_batches(stream_args):
    threads = list(PatchStream(**stream_args, workers=2).iterate(3, 7))
    processes = PatchStream(**stream_args, workers=2, processes=True).iterate(3, None)
    for expected, batch in zip(threads, itertools.islice(processes, 4)):
        assert batch.index == expected.index and batch.case_ids == expected.case_ids
        assert batch.augmented and expected.augmented
        assert torch.equal(batch.image, expected.image) and torch.equal(batch.label, expected.label)
    processes.close()  # an endless stream stops its processes when closed

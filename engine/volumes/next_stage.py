"""The cascade's hand-over between stages, as nnU-Net's `predicted_next_stage`.

When a 3d_lowres fold is validated, each of its held-out cases gets a segmentation for the next stage: the class
maps at the low-resolution spacing are resampled (the probabilities' order and separate-z rule) to the next stage's
preprocessed shape and spacing, then turned into labels (argmax; regions thresholded in `regions_class_order`). Over
the five folds every training case gets exactly one, made by the fold that did not see it. They are stored as Zarr
arrays under the low-res run folder and recorded in `next_stage_predictions`; a 3d_cascade_fullres fold reads them as
extra input channels (training and validation), and `predict` makes the same hand-over on the fly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import zarr

from voxelbase.catalog.next_stage import record_next_stage
from voxelbase.plan import ConfigurationPlan
from voxelbase.project import Project
from voxelbase.store.layout import write_array
from voxelbase.volumes.resample import resample_image

FOLDER = "predicted_next_stage"


def next_stage_dir(project: Project, experiment: str, configuration: str) -> Path:
    """runs/<experiment>/<configuration>/predicted_next_stage: one Zarr array per case."""
    return project.run_dir(experiment, configuration, "0").parent / FOLDER


def segmentation_for_next_stage(
    class_maps: np.ndarray,
    *,
    plan: ConfigurationPlan,
    next_plan: ConfigurationPlan,
    case_spacing: Sequence[float],
    shape: Sequence[int],
) -> np.ndarray:
    """(K, *low-res shape) probabilities -> uint8/uint16 labels at the next stage's preprocessed `shape`."""
    settings = plan.resampling
    resampled = resample_image(
        np.asarray(class_maps, dtype=np.float32),
        shape,
        spacing=plan.target_spacing(case_spacing),
        new_spacing=next_plan.target_spacing(case_spacing),
        order=settings.probabilities_order,
        order_z=settings.order_z,
        force_separate_z=settings.force_separate_z,
        anisotropy_threshold=settings.anisotropy_threshold,
    )
    dtype = np.uint8 if plan.label_value_count <= 256 else np.uint16
    if plan.has_regions:
        segmentation = np.zeros(resampled.shape[1:], dtype=dtype)
        for index, value in enumerate(plan.regions_class_order or ()):
            segmentation[resampled[index] > 0.5] = value
        return segmentation
    return np.argmax(resampled, axis=0).astype(dtype)


def write_next_stage(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    *,
    experiment: str,
    plan: ConfigurationPlan,
    case_id: str,
    fold: str,
    run_id: int,
    segmentation: np.ndarray,
) -> Path:
    """Store one case's hand-over (written under a temporary name, then renamed) and record it (call inside a
    transaction); replaces an earlier one of the same case."""
    directory = next_stage_dir(project, experiment, plan.configuration)
    directory.mkdir(parents=True, exist_ok=True)
    final, partial = directory / case_id, directory / f".{case_id}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    write_array(partial, segmentation, chunks=segmentation.shape)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    record_next_stage(
        con,
        experiment=experiment,
        configuration=plan.configuration,
        next_configuration=plan.next_stage,
        case_id=case_id,
        fold=fold,
        run_id=run_id,
    )
    return final


def with_previous_stage(image: np.ndarray, segmentation: np.ndarray, plan: ConfigurationPlan) -> np.ndarray:
    """A cascade stage's input: the (C, Z, Y, X) image and one one-hot channel per foreground label of the previous
    stage's (Z, Y, X) segmentation (`ConfigurationPlan.previous_stage_labels`)."""
    if tuple(segmentation.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"previous stage segmentation {tuple(segmentation.shape)} does not match the image {image.shape[1:]}"
        )
    onehot = [(segmentation == value).astype(np.float32)[None] for value in plan.previous_stage_labels]
    return np.concatenate([np.asarray(image, dtype=np.float32), *onehot], axis=0)


def read_next_stage(project: Project, experiment: str, configuration: str, case_id: str) -> np.ndarray | None:
    """A stored hand-over, or None when there is none."""
    path = next_stage_dir(project, experiment, configuration) / case_id
    if not (path / "zarr.json").is_file():
        return None
    return zarr.open_array(str(path), mode="r")[...]

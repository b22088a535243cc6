"""The patch stream: batches of (B, C, *patch) images and (B, 1, *patch) labels, read straight from Zarr.

Batch `k` is a pure function of (seed, k): which cases, where, and how it is augmented. Workers read (and, when
training on the CPU, augment) batches ahead of the training step, in order, so loading overlaps compute. Workers
are threads by default: Blosc decompression and torch ops release the GIL, but the many small Python steps between
them do not, so `processes=True` runs them as spawned processes instead (each its own interpreter; batches come
back in shared memory through torch's multiprocessing). On CUDA, augmentation runs on the GPU in the training
process instead (`augment_batch`), on whole batches.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from voxelbase.project import Project
from voxelbase.store.location import settled
from voxelbase.training.augment import AugmentConfig, AugmentParams, apply_augmentation, draw_params
from voxelbase.training.cascade_augment import augment_previous_stage, previous_stage_onehot
from voxelbase.training.patches import CaseArrays, CaseEntry, read_patch, sample_batch


@dataclass(frozen=True)
class StreamSettings:
    batch_size: int
    patch_size: tuple[int, ...]  # final patch, (z, y, x) or (y, x) for 2-D configurations
    read_size: tuple[int, ...]  # what is read: larger than patch_size when augmenting
    oversample_foreground: float
    seed: int
    num_classes: int  # label values the stored maps hold (0 .. num_classes - 1, the ignore label included)
    augment: AugmentConfig | None = None
    dummy_2d: bool = False
    probabilistic_oversampling: bool = False
    annotated_only: bool = False  # an ignore label: centre patches on annotated voxels (nnU-Net's sparse rule)
    # a cascade stage: the previous stage's segmentation, read beside the label, becomes one-hot input channels
    previous_stage_labels: tuple[int, ...] = ()
    rank: int = 0  # a distributed run's rank: each rank draws its own batches


@dataclass
class Batch:
    index: int
    image: torch.Tensor  # (B, C, *S) float32
    label: torch.Tensor  # (B, 1, *S) int16
    case_ids: list[str]
    starts: list[tuple[int, ...]]
    forced_foreground: list[bool]
    augmented: bool = False
    params: AugmentParams | None = None


def batch_generator(seed: int, index: int, stream: int, rank: int = 0) -> np.random.Generator:
    """Independent, reproducible random streams per batch: stream 0 picks patches, 1 augments, 2 the cascade's
    extra augmentation. Rank r > 0 of a distributed run draws from streams no other rank (and no single process)
    draws from."""
    return np.random.default_rng([seed, index, stream] if rank == 0 else [seed, index, stream, rank])


def _join_previous(label: torch.Tensor, settings: StreamSettings) -> torch.Tensor:
    """(B, 2, *S) label + previous-stage segmentation -> one (B, 1, *S) map of pairs (label * K + previous), so
    that one spatial transform moves both identically; padding (-1) stays -1."""
    k = settings.num_classes
    return torch.where(label[:, :1] < 0, label[:, :1], label[:, :1] * k + label[:, 1:].clamp(min=0))


def attach_previous_stage(batch: Batch, settings: StreamSettings, *, joined: bool) -> Batch:
    """A cascade batch: split the previous stage's segmentation off the label and append it to the image as one
    one-hot channel per foreground label, with nnU-Net's cascade-only augmentations when training."""
    if not settings.previous_stage_labels:
        return batch
    k = settings.num_classes
    if joined:
        pairs = batch.label.clamp(min=0)
        label, previous = torch.div(pairs, k, rounding_mode="floor"), pairs % k
    else:
        label, previous = batch.label[:, :1].clamp(min=0), batch.label[:, 1:].clamp(min=0)
    onehot = previous_stage_onehot(previous, settings.previous_stage_labels)
    if settings.augment is not None:
        onehot = augment_previous_stage(onehot, generator=batch_generator(settings.seed, batch.index, 2, settings.rank))
    image = torch.cat([batch.image, onehot.to(batch.image.dtype)], dim=1)
    return dataclasses.replace(batch, image=image, label=label.to(batch.label.dtype))


def augment_batch(batch: Batch, settings: StreamSettings, *, device: torch.device | None = None) -> Batch:
    """Augment a read batch on `device` (default: where it is) with parameters drawn from its own seed; a cascade
    batch then gets its previous-stage channels (`attach_previous_stage`)."""
    if batch.augmented:
        return batch
    if settings.augment is None:
        return attach_previous_stage(batch, settings, joined=False)
    generator = torch.Generator().manual_seed(
        int(batch_generator(settings.seed, batch.index, 1, settings.rank).integers(2**62))
    )
    params = draw_params(
        settings.augment,
        batch_size=batch.image.shape[0],
        spatial_dims=len(settings.patch_size),
        generator=generator,
        dummy_2d=settings.dummy_2d,
        channels=batch.image.shape[1],
        patch_size=settings.patch_size,
    )
    image, label = batch.image, batch.label
    if device is not None:
        image, label = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
    cascade = bool(settings.previous_stage_labels)
    classes = settings.num_classes * (settings.num_classes if cascade else 1)
    image, label = apply_augmentation(
        params,
        image,
        _join_previous(label, settings) if cascade else label,
        patch_size=settings.patch_size,
        num_classes=classes,
    )
    out = Batch(batch.index, image, label, batch.case_ids, batch.starts, batch.forced_foreground, True, params)
    return attach_previous_stage(out, settings, joined=True) if cascade else out


class PatchStream:
    """Reproducible batches from preprocessed cases of one dataset/plan/configuration."""

    def __init__(
        self,
        project: Project,
        dataset: str,
        *,
        stage: str,
        cases: Sequence[CaseEntry],
        settings: StreamSettings,
        workers: int = 2,
        prefetch: int = 4,
        augment_in_workers: bool = True,
        pin_memory: bool = False,
        processes: bool = False,
        previous_stage: Path | None = None,
    ) -> None:
        """`previous_stage`: for a cascade stage, the folder of the previous stage's segmentations (one Zarr
        array per case, at this stage's preprocessed shape)."""
        if not cases:
            raise ValueError("the patch stream needs at least one case")
        self.cases = list(cases)
        self.settings = settings
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self.augment_in_workers = augment_in_workers
        self.pin_memory = pin_memory
        self.processes = processes
        self.previous_stage = previous_stage
        self._arrays = CaseArrays(project, dataset, stage)
        self._previous: dict[str, zarr.Array] = {}
        if settings.previous_stage_labels and previous_stage is None:
            raise ValueError("a cascade stream needs the previous stage's segmentations (previous_stage)")

    def _previous_array(self, case_id: str) -> zarr.Array:
        if case_id not in self._previous:
            self._previous[case_id] = zarr.open_array(str(self.previous_stage / case_id), mode="r")
        return self._previous[case_id]

    def read(self, index: int) -> Batch:
        """Batch `index`, read (and padded) but not augmented."""
        s = self.settings
        requests = sample_batch(
            batch_generator(s.seed, index, 0, s.rank),
            self.cases,
            batch_size=s.batch_size,
            read_size=s.read_size,
            patch_size=s.patch_size,
            oversample=s.oversample_foreground,
            probabilistic=s.probabilistic_oversampling,
            annotated_only=s.annotated_only,
        )
        two_d = len(s.patch_size) == 2
        size = (1, *s.read_size) if two_d else tuple(s.read_size)
        arrays = [self._arrays.get(self.cases[r.case].case_id) for r in requests]
        channels = arrays[0][0].shape[0]
        # the batch is assembled in place: each patch is decompressed straight into its slot
        image = np.empty((len(requests), channels, *s.read_size), dtype=np.float32)
        cascade = bool(s.previous_stage_labels)
        label = np.empty((len(requests), 2 if cascade else 1, *s.read_size), dtype=np.int16)
        for slot, (request, (image_array, label_array)) in enumerate(zip(requests, arrays)):
            image_out, label_out = (image[slot][:, None], label[slot, :1]) if two_d else (image[slot], label[slot, 0])
            read_patch(image_array, request.start, size, out=image_out)
            read_patch(label_array, request.start, size, fill=-1, out=label_out)
            if cascade:  # channel 1: the previous stage's segmentation of the same voxels
                previous = self._previous_array(self.cases[request.case].case_id)
                read_patch(previous, request.start, size, fill=0, out=label[slot, 1:] if two_d else label[slot, 1])
        image, label = torch.from_numpy(image), torch.from_numpy(label)
        if s.augment is None and not cascade:
            label = label.clamp_(min=0)  # outside the nonzero mask / padding is background
        return Batch(
            index,
            image,
            label,
            [self.cases[r.case].case_id for r in requests],
            [r.start for r in requests],
            [r.forced_foreground for r in requests],
        )

    def produce(self, index: int) -> Batch:
        batch = self.read(index)
        if self.augment_in_workers or self.settings.augment is None:
            batch = augment_batch(batch, self.settings)
        if self.pin_memory:
            batch.image, batch.label = batch.image.pin_memory(), batch.label.pin_memory()
        return batch

    def iterate(self, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Batches start, start+1, ... (forever when `stop` is None), produced `prefetch` ahead by the workers."""
        with self._pool() as pool:
            produce = _produce_in_process if self.processes else self.produce
            pending: collections.deque = collections.deque()
            index = start
            try:
                while True:
                    while len(pending) < self.prefetch and (stop is None or index < stop):
                        pending.append(pool.submit(produce, index))
                        index += 1
                    if not pending:
                        return
                    batch = pending.popleft().result()
                    if self.processes and self.pin_memory:  # pinned memory belongs to the process that pins it
                        batch.image, batch.label = batch.image.pin_memory(), batch.label.pin_memory()
                    yield batch
            finally:
                for future in pending:
                    future.cancel()

    def _pool(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="patches")
        arrays = self._arrays
        recipe = {
            "project": settled(arrays.project),  # worker processes find the store without opening the catalog
            "dataset": arrays.dataset,
            "stage": arrays.stage,
            "cases": self.cases,
            "settings": self.settings,
            "augment_in_workers": self.augment_in_workers,
            "previous_stage": self.previous_stage,
        }
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=torch.multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(recipe,),
        )


_process_stream: PatchStream | None = None  # the stream a worker process produces from


def _start_process(recipe: dict) -> None:
    global _process_stream
    torch.set_num_threads(1)  # one core per worker process, as a worker thread has
    _process_stream = PatchStream(**recipe)


def _produce_in_process(index: int) -> Batch:
    return _process_stream.produce(index)

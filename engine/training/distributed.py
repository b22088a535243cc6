"""One fold on several processes with PyTorch DDP, as nnU-Net's `-num_gpus` trains it.

A rank is one process of torch's elastic launcher (what `torchrun` starts; `voxelbase train --world-size N` starts
it in-process): it reads RANK, WORLD_SIZE and LOCAL_RANK, joins the process group (NCCL on CUDA, one GPU per rank;
gloo on the CPU) and trains its share of every global batch. Rank 0 alone touches the catalog and writes
checkpoints and plots; the others receive what rank 0 read (`share_from_main`) and never open the catalog.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from voxelbase.errors import VoxelbaseError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Ranks()


class RankLost(VoxelbaseError, RuntimeError):
    """Another rank of a distributed run stopped (killed, or failed): this run ends as interrupted."""


def ranks_from_environment() -> Ranks:
    """This process's place in a torchrun-style launch; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    return Ranks(
        rank=rank,
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", rank)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)),
    )


def rank_device(ranks: Ranks, device: torch.device) -> torch.device:
    """One GPU per rank (the local rank's) on CUDA; on the CPU every rank shares the cores."""
    if not ranks.distributed or device.type != "cuda":
        return device
    if ranks.local_rank >= torch.cuda.device_count():
        raise VoxelbaseError(
            f"rank {ranks.rank} needs GPU {ranks.local_rank}, but this machine has {torch.cuda.device_count()}: "
            "start at most one rank per GPU"
        )
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join (and leave) the launch's process group; nothing for a single process or a group already joined."""
    if not ranks.distributed or dist.is_initialized():
        yield
        return
    if device.type == "cpu":  # the ranks share the cores: one thread each would leave cores idle, more oversubscribe
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.local_world_size))
    else:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank, world_size=ranks.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share_from_main(ranks: Ranks, make: Callable[[], object]) -> object:
    """`make()` on rank 0, its result on every rank. An error on rank 0 is raised on every rank, so no rank waits
    for a step the others never reach."""
    if not ranks.distributed:
        return make()
    box: list = [None]
    if ranks.main:
        try:
            box[0] = ("ok", make())
        except Exception as error:  # sent to the other ranks first, then raised here too
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        if ranks.main:
            raise value
        raise RankLost(f"rank 0 could not start the run: {value}")
    return value


def batch_share(global_batch: int, oversample: float, ranks: Ranks) -> tuple[int, float]:
    """(this rank's batch size, its foreground oversampling) by nnU-Net's DDP rule.

    The global batch is split as evenly as possible (the first ranks take one more). nnU-Net's loader forces
    foreground on the last samples of a batch (sample i is forced when i >= round(B * (1 - oversample))); each rank
    oversamples the share of forced samples that falls in its slice of the global batch, so that over all ranks
    the batch is forced exactly as a single process would force it.
    """
    if not ranks.distributed:
        return global_batch, oversample
    w = ranks.world_size
    if global_batch < w:
        raise VoxelbaseError(
            f"a global batch of {global_batch} cannot be split over {w} ranks: use at most {global_batch}"
        )
    sizes = [global_batch // w + (1 if i < global_batch % w else 0) for i in range(w)]
    low = sum(sizes[: ranks.rank])
    high = low + sizes[ranks.rank]
    if high / global_batch < 1 - oversample:
        return sizes[ranks.rank], 0.0
    if low / global_batch > 1 - oversample:
        return sizes[ranks.rank], 1.0
    random_count = round(global_batch * (1 - oversample))
    forced = sum(1 for i in range(low, high) if i >= random_count)
    return sizes[ranks.rank], forced / sizes[ranks.rank]


class _AllGatherWithGradient(torch.autograd.Function):
    """all_gather that passes gradients back: each rank gets the sum over ranks of the gradient of its own slice
    (every rank computes the same loss from the gathered values; DDP then averages the ranks' gradients)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks, differentiable (nnU-Net's batch Dice under DDP); itself alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGradient.apply(tensor).sum(0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no gradient): losses and pseudo-Dice counts for the epoch's record."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def launch(world_size: int, entrypoint: Callable, *args) -> object:
    """Run `entrypoint(*args)` on `world_size` local ranks with torch's elastic launcher (as `torchrun
    --standalone --nproc-per-node N` does) and return rank 0's result. A rank that dies ends the launch: the others
    are stopped and `torch.distributed.elastic.multiprocessing.errors.ChildFailedError` is raised."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=world_size,
        run_id=f"voxelbase-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    results = elastic_launch(config, entrypoint)(*args)
    return results[0]

"""Sliding-window inference over a whole preprocessed volume, as nnU-Net predicts.

Windows overlap by half a patch (step 0.5), are weighted by a Gaussian and averaged; several windows go through
the network in one forward pass; mirroring test-time augmentation averages all 2^k flips of the mirror axes.
Memory holds the (padded) image, the two accumulators (logits and weights) and one batch of windows, nothing else.
A 2d network is applied slice by slice along z of the same (C, Z, Y, X) volume.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from voxelbase.inference.gaussian import compute_steps, gaussian_importance_map

DEFAULT_MIRROR_AXES = (0, 1, 2)


def _pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the trailing axes with zeros up to the patch size, the content centred (nnU-Net's pad_nd_image: the
    extra voxel of an odd pad goes after). Returns the padded image and the slices of its spatial axes that undo
    the padding."""
    n = len(patch_size)
    spatial = image.shape[-n:]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, before, strict=True)]
    leading = (slice(None),) * (image.ndim - 1 - n)  # z stays whole for a 2d patch
    crop = leading + tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop
    pad: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):
        pad += [b, a]
    return F.pad(image, pad, mode="constant", value=0.0), crop


def _window_slices(spatial: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[tuple]:
    """Index tuples into the spatial axes (Z, Y, X) of the volume. For a 2d patch each window is one z slice."""
    if len(patch_size) == 3:
        steps = compute_steps(spatial, patch_size, step_size)
        return [
            tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
            for start in itertools.product(*steps)
        ]
    steps = compute_steps(spatial[1:], patch_size, step_size)
    return [
        (z, *(slice(s, s + p) for s, p in zip(start, patch_size, strict=True)))
        for z in range(spatial[0])
        for start in itertools.product(*steps)
    ]


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _flip_combinations(mirror_axes: Sequence[int] | None, n_dims: int) -> list[tuple[int, ...]]:
    """All 2^k subsets of the mirror axes as tensor dims of a (B, C, *spatial) batch, the empty subset first.
    Axes index the network's spatial dims; axes a 2d network does not have are ignored, so one default serves both."""
    if not mirror_axes:
        return [()]
    axes = sorted({int(a) for a in mirror_axes if 0 <= int(a) < n_dims})
    dims = [a + 2 for a in axes]
    return [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]


@contextlib.contextmanager
def _full_resolution_only(network: nn.Module) -> Iterator[None]:
    """Switch deep supervision off while predicting (the lower-resolution heads would be computed for nothing)."""
    flag = getattr(network, "deep_supervision", None)
    if flag:
        network.deep_supervision = False
    try:
        yield
    finally:
        if flag:
            network.deep_supervision = flag


def _forward(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    return out[0] if isinstance(out, (list, tuple)) else out


def _results_device(device: torch.device, n_bytes: int) -> torch.device:
    """Accumulate on the accelerator when the accumulators fit in half of its free memory, else in host RAM.

    Free counts what PyTorch's caching allocator holds but does not use: after training in the same process the
    cache can hold most of the card, which the driver reports as taken although it is free for these tensors.
    """
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return device if n_bytes < free // 2 else torch.device("cpu")


@torch.inference_mode()
def predict_logits(
    network: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: Sequence[int],
    step_size: float = 0.5,
    batch_windows: int = 4,
    mirror_axes: Sequence[int] | None = DEFAULT_MIRROR_AXES,
    device: torch.device | str = "cpu",
    use_gaussian: bool = True,
    gaussian_sigma_scale: float = 1.0 / 8,
    amp: bool | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Logits (K, Z, Y, X), float32 on the CPU, for a preprocessed image (C, Z, Y, X).

    `patch_size` has 3 entries for a 3d network, 2 (y, x) for a 2d network, which then runs slice-wise along z.
    `mirror_axes` index the network's spatial axes (None: no mirroring). `amp` defaults to on for CUDA (fp16
    autocast), off on the CPU where it is slow. `accumulate_dtype=torch.float16` halves accumulator memory for
    very large volumes at a small precision cost. The network is put in eval mode; its weights stay where they are
    unless they are on another device than `device`, in which case it is moved there.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {tuple(image.shape)}")
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 entries, got {patch_size}")
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be at least 1, got {batch_windows}")
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    network.eval()
    if any(p.device != device for p in network.parameters()):
        network.to(device)

    with _full_resolution_only(network):
        padded, crop = _pad_to_patch(image.float(), patch_size)
        spatial = padded.shape[1:]
        windows = _window_slices(spatial, patch_size, step_size)

        n_classes = _infer_n_classes(network, padded, patch_size, device)
        acc_bytes = (n_classes * torch.finfo(accumulate_dtype).bits // 8 + 4) * spatial.numel()
        acc_device = _results_device(device, acc_bytes + padded.numel() * 4)
        padded = padded.to(acc_device)
        logits = torch.zeros((n_classes, *spatial), dtype=accumulate_dtype, device=acc_device)
        weights = torch.zeros(spatial, dtype=torch.float32, device=acc_device)
        gaussian = (
            gaussian_importance_map(patch_size, sigma_scale=gaussian_sigma_scale, device=acc_device)
            if use_gaussian
            else torch.ones(patch_size, device=acc_device)
        )
        flips = _flip_combinations(mirror_axes, len(patch_size))
        autocast = torch.autocast(device.type, dtype=torch.float16) if amp else contextlib.nullcontext()

        bar = tqdm(total=len(windows), desc="windows", unit="win", disable=not progress, leave=False)
        for batch in _batches(windows, batch_windows):
            x = torch.stack([padded[(slice(None), *w)] for w in batch]).to(device, non_blocking=True)
            pred = None
            with autocast:
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    yi = _forward(network, xi).float()
                    yi = torch.flip(yi, dims) if dims else yi
                    pred = yi if pred is None else pred.add_(yi)
            pred = pred.div_(len(flips)).to(acc_device)
            for w, p in zip(batch, pred, strict=True):
                _accumulate(logits[(slice(None), *w)], weights[w], p, gaussian)
            del x, pred
            bar.update(len(batch))
        bar.close()

        del weights
        logits = logits[(slice(None), *crop)]
        return logits.to(device="cpu", dtype=torch.float32).contiguous()  # a crop copies only the kept part


def _accumulate(mean: torch.Tensor, total: torch.Tensor, pred: torch.Tensor, weight: torch.Tensor) -> None:
    """Fold one window into the running Gaussian-weighted mean, in place: total += w; mean += (pred - mean) * w/total.

    Equal to nnU-Net's sum(w * pred) / sum(w), but the accumulator holds values of the logits' own magnitude, so a
    float16 accumulator keeps its precision even where the Gaussian weights are tiny (window corners).
    """
    total += weight
    ratio = weight / total
    mean += (pred - mean).mul_(ratio)


def _infer_n_classes(network: nn.Module, padded: torch.Tensor, patch_size: Sequence[int], device: torch.device) -> int:
    """Output channels of the network: read from its last segmentation head when it has one (no forward pass)."""
    heads = getattr(getattr(network, "decoder", None), "heads", None)
    if heads is not None and len(heads):
        return int(heads[-1].out_channels)
    probe_shape = (1, padded.shape[0], *patch_size)
    return int(_forward(network, torch.zeros(probe_shape, device=device)).shape[1])

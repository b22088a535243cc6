"""nnU-Net's training loss: soft Dice + cross-entropy, summed over deep-supervision outputs.

Reproduces nnU-Net v2's DC_and_CE_loss with MemoryEfficientSoftDiceLoss (softmax, background excluded, smooth 1e-5,
optional batch Dice) wrapped in its DeepSupervisionWrapper (weights 1/2^i, lowest resolution weight 0, normalized),
with targets downsampled per scale by nearest-exact interpolation as nnU-Net's DownsampleSegForDSTransform does.

Region datasets train nnU-Net's DC_and_BCE_loss instead: one sigmoid output per region, the target one channel per
region (a voxel is in a region when its label is one of the region's values), soft Dice over every channel plus
binary cross-entropy. With an ignore label, ignored voxels add nothing to either term, in both losses: the Dice sums
and the cross-entropy skip them (the region loss divides its summed cross-entropy by the count of annotated voxels,
as nnU-Net does). Region targets are made from the label map at each scale; nearest-exact downsampling picks the
same voxels either way, so this equals nnU-Net's downsampling of the region channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from voxelbase.training.distributed import sum_over_ranks

if TYPE_CHECKING:
    from voxelbase.plan import ConfigurationPlan
    from voxelbase.spec.model import TrainSpec

DICE_SMOOTH = 1e-5


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Relative resolution of each deep-supervision output, full resolution first (nnU-Net's
    `1 / cumprod(strides)` without the bottleneck). The decoder has one output per stage but the last."""
    scales: list[list[float]] = []
    factor = [1.0] * len(strides[0])
    for stride in strides[:-1]:
        factor = [f * s for f, s in zip(factor, stride, strict=True)]
        scales.append([1.0 / f for f in factor])
    return scales


def deep_supervision_weights(
    n_outputs: int, *, factor: float = 0.5, drop_lowest: bool = True, ddp: bool = False
) -> list[float]:
    """factor^i per output, the lowest resolution set to 0, normalized to sum to 1 (nnU-Net's choice: the coarsest
    output is too coarse to teach anything useful). A single output gets weight 1.

    Under DDP the lowest gets 1e-6 instead of 0, as in nnU-Net's DDP trainer: a parameter without a gradient would
    keep DDP from ever averaging its bucket."""
    if n_outputs <= 1:
        return [1.0] * n_outputs
    weights = [factor**i for i in range(n_outputs)]
    if drop_lowest:
        weights[-1] = 1e-6 if ddp else 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_targets(target: torch.Tensor, scales: Sequence[Sequence[float]]) -> list[torch.Tensor]:
    """The label map at every deep-supervision scale. `target` is (B, 1, *spatial) or (B, *spatial), integer.

    Nearest-exact interpolation to round(size * scale), as nnU-Net does; one float copy of the full-resolution
    labels is shared by all scales. Returned maps keep the input's dtype and have a channel axis.
    """
    if target.ndim == len(scales[0]) + 1:
        target = target[:, None]
    results = []
    as_float = None
    for scale in scales:
        if all(s == 1 for s in scale):
            results.append(target)
            continue
        size = [round(n * s) for n, s in zip(target.shape[2:], scale, strict=True)]
        if as_float is None:
            as_float = target.float()
        results.append(F.interpolate(as_float, size=size, mode="nearest-exact").to(target.dtype))
    return results


def region_targets(target: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, 1, *spatial) label map -> (B, R, *spatial) bool: channel r is set where the label is in region r."""
    if not regions:
        raise ValueError("region targets need at least one region")
    channels = []
    for members in regions:
        inside = torch.zeros_like(target, dtype=torch.bool)
        for value in members:
            inside |= target == int(value)
        channels.append(inside)
    return torch.cat(channels, dim=1)


def _dice_from(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    batch_dice: bool,
    smooth: float,
    ddp: bool = False,
) -> torch.Tensor:
    """-mean soft Dice of probability maps against one-hot targets (B, K, *spatial), voxels under mask == 0 left out.

    `ddp` with `batch_dice`: the sums run over every rank's batch (gathered with gradients, nnU-Net's DDP Dice);
    each rank's batch is summed first, so ranks may hold batches of different sizes."""
    axes = tuple(range(2, probs.ndim))
    with torch.no_grad():
        if mask is not None:
            onehot = onehot * mask
        sum_gt = onehot.sum(axes, dtype=torch.float32)
    if mask is not None:
        probs = probs * mask
    intersect = (probs * onehot).sum(axes, dtype=torch.float32)
    sum_pred = probs.sum(axes, dtype=torch.float32)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
        if ddp:
            intersect, sum_pred, sum_gt = sum_over_ranks(intersect), sum_over_ranks(sum_pred), sum_over_ranks(sum_gt)
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    return -dice.mean()


def region_dice_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    regions: Sequence[Sequence[int]],
    batch_dice: bool,
    ignore_label: int | None = None,
    smooth: float = DICE_SMOOTH,
    weight_dice: float = 1.0,
    weight_ce: float = 1.0,
    ddp: bool = False,
) -> torch.Tensor:
    """nnU-Net's DC_and_BCE_loss of (B, R, *spatial) logits against a (B, 1, *spatial) label map."""
    onehot = region_targets(target, regions)
    mask = (target != ignore_label) if ignore_label is not None else None
    onehot_f = onehot.to(torch.float32)
    dice = _dice_from(
        torch.sigmoid(logits),
        onehot_f,
        mask=None if mask is None else mask.to(torch.float32),
        batch_dice=batch_dice,
        smooth=smooth,
        ddp=ddp,
    )
    if mask is None:
        bce = F.binary_cross_entropy_with_logits(logits, onehot_f)
    else:
        per_voxel = F.binary_cross_entropy_with_logits(logits, onehot_f, reduction="none")
        bce = (per_voxel * mask).sum() / torch.clip(mask.sum(), min=1e-8)
    return weight_ce * bce + weight_dice * dice


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool,
    smooth: float = DICE_SMOOTH,
    mask: torch.Tensor | None = None,
    include_background: bool = False,
    ddp: bool = False,
) -> torch.Tensor:
    """Negative mean soft Dice over the classes (nnU-Net's MemoryEfficientSoftDiceLoss; background left out
    unless `include_background`, as nnU-Net's do_bg=False).

    `target` is a label map (B, 1, *spatial); `mask` (B, 1, *spatial), 1 where the loss counts. With `batch_dice`
    the sums run over the batch too, so a patch without a class does not count as a perfect 1 or a hard 0.
    """
    first = 0 if include_background else 1
    probs = torch.softmax(logits, dim=1)[:, first:]
    with torch.no_grad():
        onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float32)
        onehot.scatter_(1, target.long(), 1)
        onehot = onehot[:, first:]
    return _dice_from(probs, onehot, mask=mask, batch_dice=batch_dice, smooth=smooth, ddp=ddp)


class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy (weights 1:1), over one output or a deep-supervision list of outputs.

    Call with logits (tensor or list, full resolution first) and the matching target(s): a list of label maps
    from `downsample_targets`, or one full-resolution label map that is downsampled here. With `regions` (the
    member values of each output's region) it is nnU-Net's Dice + binary cross-entropy over sigmoid outputs instead
    (Dice over every output: there is no background channel).
    """

    def __init__(
        self,
        *,
        batch_dice: bool,
        ds_scales: Sequence[Sequence[float]] | None = None,
        weight_dice: float = 1.0,
        weight_ce: float = 1.0,
        ignore_label: int | None = None,
        smooth: float = DICE_SMOOTH,
        include_background: bool = False,
        ds_factor: float = 0.5,
        ds_drop_lowest: bool = True,
        regions: Sequence[Sequence[int]] | None = None,
        ddp: bool = False,
    ) -> None:
        """`ddp`: one rank of a distributed run; batch Dice then sums over every rank's batch."""
        super().__init__()
        self.ddp = ddp
        self.regions = [tuple(int(v) for v in r) for r in regions] if regions else None
        self.batch_dice = batch_dice
        self.ds_scales = [list(s) for s in ds_scales] if ds_scales is not None else None
        self.weights = (
            deep_supervision_weights(len(self.ds_scales), factor=ds_factor, drop_lowest=ds_drop_lowest, ddp=ddp)
            if self.ds_scales
            else [1.0]
        )
        self.smooth = smooth
        self.include_background = include_background
        self.weight_dice = weight_dice
        self.weight_ce = weight_ce
        self.ignore_label = ignore_label

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of one output against a (B, 1, *spatial) or (B, *spatial) label map."""
        if target.ndim == logits.ndim - 1:
            target = target[:, None]
        if self.regions is not None:
            return region_dice_bce(
                logits,
                target,
                regions=self.regions,
                batch_dice=self.batch_dice,
                ignore_label=self.ignore_label,
                smooth=self.smooth,
                weight_dice=self.weight_dice,
                weight_ce=self.weight_ce,
                ddp=self.ddp,
            )
        mask = None
        target_dice = target
        if self.ignore_label is not None:
            valid = target != self.ignore_label
            mask = valid.to(logits.dtype)
            target_dice = torch.where(valid, target, torch.zeros_like(target))
        dice = (
            soft_dice_loss(
                logits,
                target_dice,
                batch_dice=self.batch_dice,
                mask=mask,
                smooth=self.smooth,
                include_background=self.include_background,
                ddp=self.ddp,
            )
            if self.weight_dice
            else 0
        )
        ce: torch.Tensor | int = 0
        if self.weight_ce and (mask is None or bool(mask.any())):
            ce = F.cross_entropy(
                logits,
                target[:, 0].long(),
                ignore_index=self.ignore_label if self.ignore_label is not None else -100,
            )
        return self.weight_ce * ce + self.weight_dice * dice

    def forward(
        self, outputs: torch.Tensor | Sequence[torch.Tensor], targets: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            target = targets if isinstance(targets, torch.Tensor) else targets[0]
            return self.single(outputs, target)
        if isinstance(targets, torch.Tensor):
            if self.ds_scales is None:
                raise ValueError("a list of outputs needs ds_scales or a list of targets")
            targets = downsample_targets(targets, self.ds_scales)
        if len(outputs) != len(self.weights) or len(targets) != len(outputs):
            raise ValueError(
                f"got {len(outputs)} outputs and {len(targets)} targets for {len(self.weights)} supervision scales"
            )
        total = None
        for weight, output, target in zip(self.weights, outputs, targets, strict=True):
            if weight == 0:
                continue
            term = weight * self.single(output, target)
            total = term if total is None else total + term
        return total


def training_loss(cfg: TrainSpec, plan: ConfigurationPlan, *, ddp: bool = False) -> DiceCELoss:
    """The loss a training of `plan` uses under the spec's `[train]` settings (batch Dice from the plan unless the
    spec overrides it; deep supervision over the plan's strides when the spec keeps it on)."""
    strides = plan.architecture.strides if cfg.deep_supervision else None
    return DiceCELoss(
        batch_dice=plan.batch_dice if cfg.batch_dice is None else cfg.batch_dice,
        ds_scales=deep_supervision_scales(strides) if strides else None,
        weight_dice=cfg.dice_weight,
        weight_ce=cfg.ce_weight,
        smooth=cfg.dice_smooth,
        include_background=cfg.dice_include_background,
        ds_factor=cfg.ds_weight_factor,
        ds_drop_lowest=cfg.ds_drop_lowest,
        ignore_label=plan.ignore_label,
        regions=[members for _, members in plan.regions] or None,
        ddp=ddp,
    )


def build_loss(
    *,
    batch_dice: bool,
    strides: Sequence[Sequence[int]] | None,
    ignore_label: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> DiceCELoss:
    """The training loss for a plan: pass the plan's architecture strides for deep supervision, None without."""
    return DiceCELoss(
        batch_dice=batch_dice,
        ds_scales=deep_supervision_scales(strides) if strides is not None else None,
        ignore_label=ignore_label,
        regions=regions,
    )

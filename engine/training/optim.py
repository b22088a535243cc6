"""Optimizer and learning-rate schedule, as nnU-Net trains: SGD with Nesterov momentum and poly decay per epoch.

Gradient clipping (norm 12) belongs to the loop, between backward and step.
"""

from __future__ import annotations

import torch
from torch import nn


def build_optimizer(
    network: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """SGD with Nesterov momentum over all parameters (nnU-Net: lr 1e-2, weight decay 3e-5, momentum 0.99)."""
    return torch.optim.SGD(network.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler: initial_lr * (1 - epoch / max_epochs) ** exponent, set at the start of `epoch`.

    A pure function of the epoch, so a resumed run gets the same rate without any scheduler state.
    """
    if max_epochs <= 0:
        raise ValueError(f"max_epochs must be positive, got {max_epochs}")
    fraction = min(max(epoch, 0), max_epochs) / max_epochs
    return initial_lr * (1.0 - fraction) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

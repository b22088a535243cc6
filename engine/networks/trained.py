"""From a plan to a network, and from a checkpoint to a trained model: the one place either is built.

Training builds `network_for_plan(plan)` with deep supervision; validation and prediction load
`load_trained_model(checkpoint)`, which builds the same network without it and loads the weights. The plan comes
from inside the checkpoint, so a model preprocesses exactly as it was trained whatever was planned since.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from voxelbase.networks.checkpoint import load_checkpoint
from voxelbase.networks.unet import UNet, build_network
from voxelbase.plan import ConfigurationPlan


def network_for_plan(plan: ConfigurationPlan, *, deep_supervision: bool) -> UNet:
    """The freshly initialised network of a configuration (inputs: its channels; outputs: its classes)."""
    return build_network(
        plan.architecture.to_dict(),
        in_channels=plan.input_channels,
        num_classes=plan.num_classes,
        deep_supervision=deep_supervision,
    )


@dataclass(frozen=True)
class TrainedModel:
    """A trained network in eval mode (full-resolution output only) with the plan and spec it was trained with."""

    network: torch.nn.Module
    plan: ConfigurationPlan
    spec: dict
    checkpoint: Path


def load_trained_model(checkpoint: Path, *, device: torch.device) -> TrainedModel:
    """Weights + plan -> module on `device`; loading never runs code from the file (`weights_only=True`)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    plan = ConfigurationPlan.from_dict(state["plan"])
    network = network_for_plan(plan, deep_supervision=False)
    network.load_state_dict(state["network"])
    return TrainedModel(network.to(device).eval(), plan, state["spec"], checkpoint)


def trained_plan(checkpoint: Path) -> ConfigurationPlan:
    """The plan a checkpoint was trained with, without building its network."""
    return ConfigurationPlan.from_dict(load_checkpoint(checkpoint, map_location="cpu")["plan"])

"""Networks and trained models, below every stage: the U-Nets a plan describes, checkpoints, loading weights."""

from voxelbase.networks.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from voxelbase.networks.trained import TrainedModel, load_trained_model, network_for_plan, trained_plan
from voxelbase.networks.unet import build_network, count_parameters

__all__ = [
    "CheckpointError",
    "TrainedModel",
    "build_network",
    "count_parameters",
    "load_checkpoint",
    "load_trained_model",
    "network_for_plan",
    "save_checkpoint",
    "trained_plan",
]

"""Checkpoints: tensors and plain values only, written atomically, loaded with `weights_only=True`.

Opening a checkpoint never runs code: the resolved spec and plan travel as JSON text beside the state dicts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from voxelbase.errors import VoxelbaseError

CHECKPOINT_VERSION = 1


class CheckpointError(VoxelbaseError, RuntimeError):
    pass


def save_checkpoint(
    path: Path, *, network, optimizer, epoch: int, spec: dict, plan: dict, state: dict[str, Any]
) -> None:
    """Write `path` via a temporary file and a rename, so a kill never leaves a half-written checkpoint."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "spec_json": json.dumps(spec, sort_keys=True),
        "plan_json": json.dumps(plan, sort_keys=True),
        "state_json": json.dumps(state),
        "torch_rng": torch.random.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, map_location="cpu") -> dict[str, Any]:
    """The checkpoint's contents, with spec, plan and loop state decoded; a clear error when it is damaged."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
        payload["spec"] = json.loads(payload.pop("spec_json"))
        payload["plan"] = json.loads(payload.pop("plan_json"))
        payload["state"] = json.loads(payload.pop("state_json"))
    except Exception as error:  # a truncated or foreign file fails in many ways inside torch.load
        raise CheckpointError(
            f"{path}: checkpoint is corrupt or not a Voxelbase checkpoint ({type(error).__name__}: {error})"
        ) from error
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    return payload

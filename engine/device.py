"""Choosing the compute device: 'auto' takes CUDA when present, and asking for a missing GPU is a clear error."""

from __future__ import annotations

import torch

from engine.errors import VoxelbaseError


class DeviceError(VoxelbaseError, RuntimeError):
    pass


def resolve_device(name: str | None = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was asked for, but this machine has no CUDA GPU; use --device cpu or auto"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return device
    raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N")

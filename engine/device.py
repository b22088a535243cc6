"""Choosing the compute device: 'auto' takes CUDA when present, and asking for a missing GPU is a clear error."""

from __future__ import annotations

import torch

from voxelbase.errors import VoxelbaseError


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


def autocast_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype a training step runs under, or None for full float32.

    'auto' is bf16 on a CUDA GPU that supports it, else fp16 there, and off on the CPU (where autocast is slow);
    an explicit 'bf16' or 'fp16' is honoured on any device (bf16 falls back to fp16 on a GPU without it), so the
    mixed-precision path can be exercised on the CPU too. fp16 needs a gradient scaler, bf16 does not.
    """
    if amp == "off":
        return None
    if amp not in ("auto", "bf16", "fp16"):
        raise DeviceError(f"unknown amp setting {amp!r}: use auto, bf16, fp16 or off")
    on_gpu = device.type == "cuda"
    if amp == "auto" and not on_gpu:
        return None
    if amp == "fp16" or (on_gpu and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16

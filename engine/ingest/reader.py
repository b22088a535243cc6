"""Reading image files with SimpleITK into (Z, Y, X) arrays plus geometry in (z, y, x) order.

SimpleITK is imported here only: training and inference from the store never need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.ingest.errors import IngestError

TWO_D_SPACING = 999.0  # the spacing nnU-Net gives the missing axis of a 2-D image


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, (z, y, x) rows and columns

    def mismatch(self, other: Geometry, *, rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
        """Which field differs beyond tolerance (relative to spacing for origins), or None."""
        if not np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol):
            return f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}"
        if not np.allclose(self.origin, other.origin, rtol=0, atol=max(1e-3, 1e-3 * min(self.spacing))):
            return f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=1e-4):
            return f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}"
        return None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def itk_to_zyx(spacing, origin, direction) -> Geometry:
    """ITK's (x, y, z) geometry to (z, y, x): reverse spacing and origin, reverse rows and columns of the matrix."""
    n = len(spacing)
    matrix = np.asarray(direction, dtype=float).reshape(n, n)[:3, :3]
    return Geometry(
        spacing=tuple(float(s) for s in reversed(spacing[:3])),
        origin=tuple(float(o) for o in reversed(origin[:3])),
        direction=tuple(float(v) for v in matrix[::-1, ::-1].ravel()),
    )


def zyx_to_itk(geometry: Geometry) -> tuple[tuple, tuple, tuple]:
    """The inverse of `itk_to_zyx`, for writing images."""
    matrix = np.asarray(geometry.direction, dtype=float).reshape(3, 3)[::-1, ::-1]
    return tuple(reversed(geometry.spacing)), tuple(reversed(geometry.origin)), tuple(matrix.ravel())


def read_image(path: Path, *, four_d: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read one file. Returns (Z, Y, X) for 3-D (or (C, Z, Y, X) when `four_d`) and its geometry."""
    import SimpleITK as sitk

    if not path.is_file():
        raise IngestError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        reason = next((line for line in first if "ERROR" in line or "rror" in line), first[-1] if first else "")
        raise IngestError(f"{path}: unreadable or truncated image file ({reason.strip()[:200]})") from error
    dimension = image.GetDimension()
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise IngestError(f"{path}: vector images are not supported; store each channel as its own file")
    if dimension == 2 and not four_d:
        array = array[None]
        spacing, origin = (*spacing, TWO_D_SPACING), (*origin, 0.0)
        d = direction
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    elif four_d and dimension == 3:
        array = array[None]  # a single-channel MSD image
    elif four_d and dimension != 4:
        raise IngestError(f"{path}: expected a 3-D or 4-D image, got {dimension}-D")
    elif not four_d and dimension != 3:
        raise IngestError(f"{path}: expected a 2-D or 3-D image, got {dimension}-D")
    return array, itk_to_zyx(spacing, origin, direction)

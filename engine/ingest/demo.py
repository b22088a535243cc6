"""The project's own synthetic dataset, in nnU-Net v2 raw layout, for trying Voxelbase end to end.

Each case is an abdomen-like CT volume with anisotropic spacing: air around a soft-tissue body, a "liver"
(label 1) holding a "tumor" (label 2), and two bright contrast-enhanced "kidneys" (label 3), with
partial-volume blur and scanner noise in Hounsfield units. Sizes, positions, spacings and orientations vary.

Two kinds: `ct` (the default; small, low-contrast tumour and kidneys, hard for a short training run; the reference
fixtures are made from it) and `ct-quick` (larger structures, a hyperdense tumour, each structure in its own
intensity band and less noise: what a U-Net learns in the few hundred iterations `make demo` can afford on a CPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

LABELS = {"background": 0, "liver": 1, "tumor": 2, "kidney": 3}
# where the generated (thick, in-plane, in-plane) axes go: written array = generated.transpose(COARSE_AXES[axis])
COARSE_AXES = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (1, 2, 0)}
ORIENTATIONS = [  # ITK direction matrices: identity, LPS-like flip, a rotation about z
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    (0.9659258, -0.2588190, 0, 0.2588190, 0.9659258, 0, 0, 0, 1),
]


@dataclass(frozen=True)
class Anatomy:
    """Scale factors and intensities of the structures; `ct` draws exactly the same random numbers as `ct-quick`."""

    liver_scale: float = 1.0
    tumor_scale: float = 1.0  # tumour radius relative to the liver's
    tumor_offset: float = 1.0  # how far from the liver's centre the tumour may sit
    kidney_scale: float = 1.0
    kidney_spread: float = 1.0  # left-right distance of the kidneys from the midline
    body_hu: float = 35.0
    liver_hu: float = 95.0
    tumor_hu: float = 45.0
    kidney_hu: float = 170.0
    noise_hu: float = 18.0


KINDS = {
    "ct": Anatomy(),
    "ct-quick": Anatomy(
        liver_scale=1.4,
        tumor_scale=1.8,
        tumor_offset=0.4,
        kidney_scale=2.0,
        kidney_spread=1.4,
        body_hu=20.0,
        liver_hu=110.0,
        tumor_hu=180.0,
        kidney_hu=250.0,
        noise_hu=6.0,
    ),
}


def _ellipsoid(grid, center, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def demo_case(
    rng: np.random.Generator, shape: tuple[int, int, int], anatomy: Anatomy = KINDS["ct"]
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One case: (image int16 (Z, Y, X) in HU, label uint8, spacing (z, y, x))."""
    shape = tuple(int(s * rng.uniform(0.85, 1.15)) for s in shape)
    spacing = (float(rng.uniform(2.5, 3.5)), *(float(rng.uniform(0.7, 0.9)),) * 2)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    size = np.array(shape, float)
    centre = size / 2 + rng.normal(0, 1, 3)
    body = _ellipsoid(grid, centre, size * rng.uniform(0.40, 0.46, 3))
    liver_c = centre + np.array([0, -0.08, -0.12]) * size + rng.normal(0, 1.5, 3)
    liver_r = size * rng.uniform(0.16, 0.22, 3) * anatomy.liver_scale
    liver = _ellipsoid(grid, liver_c, liver_r) & body
    tumor_c = liver_c + rng.uniform(-0.4, 0.4, 3) * liver_r * anatomy.tumor_offset
    tumor = _ellipsoid(grid, tumor_c, liver_r * rng.uniform(0.25, 0.4) * anatomy.tumor_scale) & liver
    kidneys = np.zeros(shape, bool)
    for side in (-1, 1):
        c = centre + np.array([0, 0.15, side * 0.2 * anatomy.kidney_spread]) * size + rng.normal(0, 1, 3)
        radii = size * np.array([0.14, 0.07, 0.05]) * rng.uniform(0.9, 1.1) * anatomy.kidney_scale
        kidneys |= _ellipsoid(grid, c, radii)
    kidneys &= body & ~liver
    label = np.zeros(shape, np.uint8)
    label[liver], label[tumor], label[kidneys] = 1, 2, 3
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = anatomy.body_hu + rng.normal(0, 5)
    hu[liver] = anatomy.liver_hu + rng.normal(0, 8)
    hu[tumor] = anatomy.tumor_hu + rng.normal(0, 8)
    hu[kidneys] = anatomy.kidney_hu + rng.normal(0, 10)
    hu = gaussian_filter(hu, 0.7) + rng.normal(0, anatomy.noise_hu, shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16), label, spacing


def _write(array: np.ndarray, spacing, origin, direction, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_demo_dataset(
    out: Path,
    *,
    cases: int = 10,
    test_cases: int = 2,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 64, 64),
    kind: str = "ct",
    coarse_axis: str = "z",
) -> Path:
    """Write `cases` labelled and `test_cases` unlabelled cases of a kind in KINDS to `out` (nnU-Net v2 raw layout).

    `coarse_axis` puts the thick-slice axis (about 3 mm against 0.8 mm) on z, y or x of the written volumes; `shape`
    is always the written (z, y, x). With y or x, nnU-Net transposes the data for its 2d configuration.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown demo data kind {kind!r}; known: {', '.join(KINDS)}")
    if coarse_axis not in COARSE_AXES:
        raise ValueError(f"coarse_axis must be one of z, y, x, got {coarse_axis!r}")
    anatomy = KINDS[kind]
    move = COARSE_AXES[coarse_axis]  # generated (thick, a, b) -> written order
    drawn_shape = tuple(shape[a] for a in np.argsort(move))
    out = Path(out)
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for index in range(cases + test_cases):
        case_id = f"demo_{index:03d}"
        image, label, spacing = demo_case(rng, drawn_shape, anatomy)
        if coarse_axis != "z":
            image, label = image.transpose(move), label.transpose(move)
            spacing = tuple(spacing[a] for a in move)
        origin = tuple(float(v) for v in rng.uniform(-150, 150, 3))
        direction = ORIENTATIONS[index % len(ORIENTATIONS)]
        folder = "imagesTr" if index < cases else "imagesTs"
        _write(image, spacing, origin, direction, out / folder / f"{case_id}_0000.nii.gz")
        if index < cases:
            _write(label, spacing, origin, direction, out / "labelsTr" / f"{case_id}.nii.gz")
    description = {
        "name": "Voxelbase demo abdomen CT",
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return out

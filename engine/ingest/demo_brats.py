"""A BraTS-like synthetic dataset in nnU-Net v2 raw layout, for trying region-based training in one command.

Each case is a head with four MR channels (T1, T1ce, T2, FLAIR) and a tumour of three nested structures, labelled as
nnU-Net's converted BraTS is: 1 oedema, 2 non-enhancing core (necrosis), 3 enhancing tumour (a rim around the
necrosis). dataset.json declares the evaluated regions, as nnU-Net's Dataset137_BraTS2021 does: whole tumour
[1, 2, 3] ⊇ tumour core [2, 3] ⊇ enhancing tumour [3], with `regions_class_order` [1, 2, 3].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
REGION_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]
# mean intensity per tissue (brain, oedema, necrosis, enhancing) in each channel: T1, T1ce, T2, FLAIR
TISSUE = np.array(
    [
        [600.0, 620.0, 500.0, 450.0],  # brain
        [520.0, 560.0, 900.0, 950.0],  # oedema: bright on T2 and FLAIR
        [350.0, 380.0, 1000.0, 600.0],  # necrosis: dark on T1, bright on T2
        [560.0, 1200.0, 800.0, 800.0],  # enhancing: bright on T1ce
    ]
)


def _ellipsoid(grid, center, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def brats_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image float32 (4, Z, Y, X), label uint8 (Z, Y, X)); spacing is isotropic 1 mm as in BraTS."""
    shape = tuple(int(s * rng.uniform(0.9, 1.1)) for s in shape)
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    size = np.array(shape, float)
    centre = size / 2 + rng.normal(0, 0.5, 3)
    brain = _ellipsoid(grid, centre, size * rng.uniform(0.38, 0.44, 3))
    tumour_c = centre + rng.uniform(-0.12, 0.12, 3) * size
    whole_r = size * rng.uniform(0.14, 0.2, 3)
    whole = _ellipsoid(grid, tumour_c, whole_r) & brain
    core_c = tumour_c + rng.uniform(-0.2, 0.2, 3) * whole_r
    core_r = whole_r * rng.uniform(0.45, 0.6)
    core = _ellipsoid(grid, core_c, core_r) & whole
    necrosis = _ellipsoid(grid, core_c, core_r * rng.uniform(0.45, 0.65)) & core
    label = np.zeros(shape, np.uint8)
    label[whole] = 1
    label[core] = 3  # the enhancing rim of the core...
    label[necrosis] = 2  # ...around a non-enhancing centre
    tissue = np.where(brain, 0, -1)
    tissue[whole] = 1
    tissue[core] = 3
    tissue[necrosis] = 2
    image = np.zeros((4, *shape), np.float32)
    for channel in range(4):
        means = TISSUE[:, channel] * rng.uniform(0.9, 1.1)
        volume = np.where(tissue >= 0, means[np.clip(tissue, 0, 3)], 0.0).astype(np.float32)
        volume = gaussian_filter(volume, 0.8) + rng.normal(0, 40, shape).astype(np.float32)
        image[channel] = np.where(brain, np.clip(volume, 0, None), 0)
    return image, label


def _write(array: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def write_brats_dataset(
    out: Path, *, cases: int = 10, test_cases: int = 2, seed: int = 0, shape: tuple[int, int, int] = (32, 40, 40)
) -> Path:
    """Write `cases` labelled and `test_cases` unlabelled BraTS-like cases to `out` (nnU-Net v2 raw layout)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for index in range(cases + test_cases):
        case_id = f"brats_{index:03d}"
        image, label = brats_case(rng, shape)
        folder = "imagesTr" if index < cases else "imagesTs"
        for channel in range(image.shape[0]):
            _write(image[channel], out / folder / f"{case_id}_{channel:04d}.nii.gz")
        if index < cases:
            _write(label, out / "labelsTr" / f"{case_id}.nii.gz")
    description = {
        "name": "Voxelbase BraTS-like MR (regions)",
        "channel_names": CHANNELS,
        "labels": REGION_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return out

"""A sparsely annotated copy of a labelled dataset in nnU-Net v2 raw layout: the ignore label, tried in one command.

Images are copied as they are; in each training label only every `every`-th slice along each axis keeps its labels
(the slices at offset every // 2, so a small volume keeps its middle), and every other voxel is set to the ignore
label, declared in the copy's dataset.json as `"ignore"` with the value one above the highest declared label
(nnU-Net requires it to be the highest). Training on the copy learns from the kept slices only, as nnU-Net does on
sparse annotations; evaluating against the dense original shows what the sparsity costs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from voxelbase.ingest.errors import IngestError


def _highest_value(labels: dict, description: dict) -> int:
    values = [0, *(description.get("regions_class_order") or [])]
    for name, value in labels.items():
        if name != "ignore":
            values.extend(value if isinstance(value, list) else [value])
    return max(int(v) for v in values)


def kept_slices(shape: tuple[int, ...], every: int) -> np.ndarray:
    """Boolean mask of the voxels on a kept slice of any axis: index % every == every // 2."""
    keep = np.zeros(shape, dtype=bool)
    for axis, n in enumerate(shape):
        index = [None] * len(shape)
        index[axis] = slice(None)
        keep |= (np.arange(n) % every == every // 2)[tuple(index)]
    return keep


def write_sparse_copy(source: Path, out: Path, *, every: int = 5) -> Path:
    """Copy the nnU-Net raw dataset at `source` to `out`, keeping one slice in `every` per axis of each label."""
    import SimpleITK as sitk

    source, out = Path(source), Path(out)
    if every < 1:
        raise IngestError(f"keep one slice in N: N must be at least 1, got {every}")
    path = source / "dataset.json"
    if not path.is_file():
        raise IngestError(f"{path}: not found (a sparse copy needs an nnU-Net raw dataset folder)")
    description = json.loads(path.read_text())
    labels = dict(description.get("labels", {}))
    if "ignore" in labels:
        raise IngestError(f"{path}: the dataset already declares an 'ignore' label; copy a densely labelled one")
    if not (source / "labelsTr").is_dir():
        raise IngestError(f"{source / 'labelsTr'}: not found (a sparse copy needs labelled training cases)")
    ignore = _highest_value(labels, description) + 1
    if out.resolve() == source.resolve():
        raise IngestError(f"{out}: the sparse copy must go to another folder than its source")
    for sub in ("imagesTr", "imagesTs"):
        if (source / sub).is_dir():
            shutil.copytree(source / sub, out / sub, dirs_exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    ending = description.get("file_ending", ".nii.gz")
    for label_file in sorted((source / "labelsTr").glob(f"*{ending}")):
        image = sitk.ReadImage(str(label_file))
        array = sitk.GetArrayFromImage(image)
        sparse = np.where(kept_slices(array.shape, every), array, ignore).astype(
            np.min_scalar_type(max(ignore, int(array.max(initial=0))))
        )
        written = sitk.GetImageFromArray(sparse)
        written.CopyInformation(image)
        sitk.WriteImage(written, str(out / "labelsTr" / label_file.name), useCompression=True)
    description["labels"] = {**labels, "ignore": ignore}
    description["name"] = f"{description.get('name', source.name)} (sparse: 1 slice in {every} per axis)"
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    return out
